//! Token usage from provider responses, and reporting it to oknekd for token budgets.
//!
//! The response bytes go to the client unchanged; [`UsageScanner`] only looks at a copy as it
//! streams by. What it understands:
//!
//! - OpenAI chat completions: `usage.prompt_tokens` / `usage.completion_tokens` in the body, or
//!   in the last chunk of a stream when the client asked for `stream_options.include_usage`
//!   (the gateway never changes a request, so a stream without it has unknown usage);
//! - OpenAI responses API: `usage.input_tokens` / `usage.output_tokens`, in a stream inside the
//!   `response` of `response.completed` (or `response.incomplete` / `response.failed`);
//! - Anthropic messages: `usage` in the message; a stream reports input in `message_start` and
//!   the cumulative output in `message_delta`. Cache reads and writes count as input;
//! - Ollama: `prompt_eval_count` / `eval_count`, in the body or the final NDJSON line;
//! - Google: `usageMetadata.promptTokenCount` / `candidatesTokenCount`.
//!
//! Streams repeat cumulative counts, so the last value reported for each side wins. Memory is
//! bounded: one event or line of at most [`MAX_LINE`] bytes, and a JSON body of at most
//! [`MAX_BODY`] bytes (beyond that, only the usage in its last [`TAIL`] bytes is found).

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::authz;

/// The longest SSE event or NDJSON line scanned; longer ones are skipped (usage events are
/// small).
pub const MAX_LINE: usize = 256 << 10;
/// The largest JSON body parsed whole.
pub const MAX_BODY: usize = 1 << 20;
/// How much of the end of a larger body is kept to find its usage.
pub const TAIL: usize = 64 << 10;

/// Tokens a response reported. A side the response did not name is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
}

impl Usage {
    pub fn is_known(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }

    /// Takes what one JSON object (a whole response, an SSE event's data, an NDJSON line)
    /// reports; later reports replace earlier ones.
    pub fn absorb(&mut self, v: &Value) {
        if !v.is_object() {
            return;
        }
        let nested = [
            v.get("usage"),
            v.get("message").and_then(|m| m.get("usage")),
            v.get("response").and_then(|r| r.get("usage")),
        ];
        for usage in nested.into_iter().flatten().filter(|u| u.is_object()) {
            let cached = num(usage, "cache_creation_input_tokens").unwrap_or(0)
                + num(usage, "cache_read_input_tokens").unwrap_or(0);
            let input = num(usage, "prompt_tokens")
                .or_else(|| num(usage, "input_tokens"))
                .map(|n| n.saturating_add(cached));
            self.take(
                input,
                num(usage, "completion_tokens").or_else(|| num(usage, "output_tokens")),
            );
        }
        self.take(num(v, "prompt_eval_count"), num(v, "eval_count"));
        if let Some(m) = v.get("usageMetadata") {
            self.take(num(m, "promptTokenCount"), num(m, "candidatesTokenCount"));
        }
    }

    fn take(&mut self, input: Option<u64>, output: Option<u64>) {
        if input.is_some() {
            self.input = input;
        }
        if output.is_some() {
            self.output = output;
        }
    }
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// How a response body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `text/event-stream`: `data:` lines, events separated by blank lines.
    EventStream,
    /// One JSON document, or newline-delimited JSON objects (Ollama's streams).
    Json,
}

/// Finds the usage in a response body fed to it piece by piece.
#[derive(Debug)]
pub struct UsageScanner {
    format: BodyFormat,
    /// The current line (both formats), at most [`MAX_LINE`] bytes.
    line: Vec<u8>,
    /// The current line was too long: skip to its end.
    skipping: bool,
    /// An SSE event's `data:` lines so far.
    data: Vec<u8>,
    /// A JSON body, whole while it fits [`MAX_BODY`], then its last [`TAIL`] bytes.
    body: Vec<u8>,
    body_overflowed: bool,
    usage: Usage,
}

impl UsageScanner {
    pub fn new(format: BodyFormat) -> UsageScanner {
        UsageScanner {
            format,
            line: Vec::new(),
            skipping: false,
            data: Vec::new(),
            body: Vec::new(),
            body_overflowed: false,
            usage: Usage::default(),
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        if self.format == BodyFormat::Json {
            self.keep_body(bytes);
        }
        while !bytes.is_empty() {
            let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(nl) => (&bytes[..nl], &bytes[nl + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping {
                if self.line.len() + part.len() > MAX_LINE {
                    self.skipping = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if complete {
                if !self.skipping {
                    let line = std::mem::take(&mut self.line);
                    self.on_line(&line);
                    self.line = line;
                    self.line.clear();
                }
                self.skipping = false;
            }
        }
    }

    fn keep_body(&mut self, bytes: &[u8]) {
        self.body.extend_from_slice(bytes);
        if self.body.len() > MAX_BODY {
            self.body_overflowed = true;
        }
        if self.body_overflowed && self.body.len() > TAIL {
            let cut = self.body.len() - TAIL;
            self.body.drain(..cut);
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.format {
            BodyFormat::Json => {
                let line = line.trim_ascii();
                if line.first() == Some(&b'{')
                    && let Ok(v) = serde_json::from_slice::<Value>(line)
                {
                    self.usage.absorb(&v);
                }
            }
            BodyFormat::EventStream => {
                if line.is_empty() {
                    self.end_event();
                } else if let Some(data) = line.strip_prefix(b"data:") {
                    let data = data.strip_prefix(b" ").unwrap_or(data);
                    if self.data.len() + data.len() < MAX_LINE {
                        if !self.data.is_empty() {
                            self.data.push(b'\n');
                        }
                        self.data.extend_from_slice(data);
                    }
                }
            }
        }
    }

    fn end_event(&mut self) {
        if self.data.first() == Some(&b'{')
            && let Ok(v) = serde_json::from_slice::<Value>(&self.data)
        {
            self.usage.absorb(&v);
        }
        self.data.clear();
    }

    /// The usage the whole body reported (`is_known() == false`: none).
    pub fn finish(mut self) -> Usage {
        match self.format {
            BodyFormat::EventStream => {
                if !self.line.is_empty() && !self.skipping {
                    let line = std::mem::take(&mut self.line);
                    self.on_line(&line);
                }
                self.end_event();
            }
            BodyFormat::Json => {
                if !self.line.is_empty() && !self.skipping {
                    let line = std::mem::take(&mut self.line);
                    self.on_line(&line);
                }
                if self.usage.is_known() {
                    // Found on a line: a compact body or an NDJSON stream.
                } else if !self.body_overflowed {
                    // A pretty-printed body spans lines: parse it whole.
                    if let Ok(v) = serde_json::from_slice::<Value>(&self.body) {
                        self.usage.absorb(&v);
                    }
                } else {
                    self.usage.absorb(&usage_in_tail(&self.body));
                }
            }
        }
        self.usage
    }
}

/// `{"usage": …}` from the last `"usage":{…}` object in the end of a body too large to parse.
fn usage_in_tail(tail: &[u8]) -> Value {
    const KEY: &[u8] = b"\"usage\"";
    let Some(at) = tail.windows(KEY.len()).rposition(|w| w == KEY) else {
        return Value::Null;
    };
    let rest = tail[at + KEY.len()..].trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b":") else {
        return Value::Null;
    };
    let mut values = serde_json::Deserializer::from_slice(rest.trim_ascii_start()).into_iter();
    match values.next() {
        Some(Ok(usage @ Value::Object(_))) => serde_json::json!({ "usage": usage }),
        _ => Value::Null,
    }
}

/// `{"cmd":"model_usage",…}` as the daemon's control protocol defines it.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub cmd: &'static str,
    pub pid: u32,
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub api: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    /// Both `None`: the response reported no usage.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The `agent` and `caller` of the daemon's answer to the call, so the usage is charged to
    /// the caller that was judged even if its process has exited meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub caller: Value,
}

/// Reports usage to oknekd from a thread of its own: the relay never waits for the daemon.
#[derive(Debug, Clone)]
pub struct UsageReporter {
    queue: SyncSender<UsageReport>,
}

/// Reports waiting for the daemon beyond this are dropped (and logged).
const QUEUE: usize = 1024;

impl UsageReporter {
    pub fn start(control: PathBuf, timeout: Duration) -> UsageReporter {
        let (queue, reports) = mpsc::sync_channel(QUEUE);
        std::thread::spawn(move || send_reports(&control, timeout, &reports));
        UsageReporter { queue }
    }

    pub fn report(&self, report: UsageReport) {
        match self.queue.try_send(report) {
            Ok(()) => {}
            Err(TrySendError::Full(r)) => eprintln!(
                "oknek-gateway: usage of pid {} {}/{} not reported: {QUEUE} reports already wait for oknekd",
                r.pid,
                r.provider,
                r.model.as_deref().unwrap_or("?")
            ),
            Err(TrySendError::Disconnected(_)) => {
                eprintln!("oknek-gateway: usage not reported: the reporting thread is gone");
            }
        }
    }
}

fn send_reports(control: &std::path::Path, timeout: Duration, reports: &Receiver<UsageReport>) {
    for report in reports {
        if let Err(e) = authz::send(control, &report, timeout) {
            eprintln!(
                "oknek-gateway: usage of pid {} {}/{} (in={:?} out={:?}) not charged: {e}",
                report.pid,
                report.provider,
                report.model.as_deref().unwrap_or("?"),
                report.input_tokens,
                report.output_tokens
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of every size from 1 to 64 bytes; each must give `expected`.
    #[track_caller]
    fn scan(format: BodyFormat, body: &str, expected: Usage) {
        for piece in 1..=64 {
            let mut s = UsageScanner::new(format);
            for chunk in body.as_bytes().chunks(piece) {
                s.feed(chunk);
            }
            assert_eq!(s.finish(), expected, "pieces of {piece} bytes");
        }
    }

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input: Some(input),
            output: Some(output),
        }
    }

    #[test]
    fn openai_chat_completion() {
        let body = r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {"role": "assistant", "content": "The usage field is {\"usage\": 1}.", "refusal": null},
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0}
  },
  "service_tier": "default"
}"#;
        scan(BodyFormat::Json, body, usage(1117, 46));
    }

    #[test]
    fn openai_stream_with_and_without_include_usage() {
        let chunk = |delta: &str, usage: &str| {
            format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{delta}]{usage}}}\n\n"
            )
        };
        let mut stream = String::new();
        stream += &chunk(
            r#"{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}"#,
            r#","usage":null"#,
        );
        stream += &chunk(
            r#"{"index":0,"delta":{},"finish_reason":"stop"}"#,
            r#","usage":null"#,
        );
        let without = format!("{stream}data: [DONE]\n\n");
        scan(BodyFormat::EventStream, &without, Usage::default());
        let with = format!(
            "{stream}{}data: [DONE]\n\n",
            chunk(
                "",
                r#","usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}"#
            )
        );
        scan(BodyFormat::EventStream, &with, usage(19, 10));
        // CRLF line ends are events all the same.
        scan(
            BodyFormat::EventStream,
            &with.replace('\n', "\r\n"),
            usage(19, 10),
        );
    }

    #[test]
    fn openai_responses_api() {
        let body = r#"{"id":"resp_67cc","object":"response","status":"completed","model":"gpt-4.1",
            "output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}],
            "usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},
            "output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;
        scan(BodyFormat::Json, body, usage(36, 87));
        let stream = "event: response.created\n\
            data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}\n\n\
            event: response.output_text.delta\n\
            data: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"delta\":\"Hi\"}\n\n\
            event: response.completed\n\
            data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\
            \"usage\":{\"input_tokens\":37,\"output_tokens\":11,\"total_tokens\":48}}}\n\n";
        scan(BodyFormat::EventStream, stream, usage(37, 11));
    }

    #[test]
    fn anthropic_messages() {
        let body = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-3-5-haiku-latest",
            "content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","stop_sequence":null,
            "usage":{"input_tokens":2095,"cache_creation_input_tokens":100,"cache_read_input_tokens":5,
            "output_tokens":503}}"#;
        scan(BodyFormat::Json, body, usage(2200, 503));
        let stream = "event: message_start\n\
            data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\
            \"content\":[],\"model\":\"claude-3-5-haiku-latest\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
            event: content_block_start\n\
            data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
            event: ping\ndata: {\"type\": \"ping\"}\n\n\
            event: content_block_delta\n\
            data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
            event: message_delta\n\
            data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
            event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        scan(BodyFormat::EventStream, stream, usage(25, 15));
    }

    #[test]
    fn ollama_body_and_ndjson_stream() {
        let body = r#"{"model":"qwen2.5-coder","created_at":"2026-11-22T10:00:00Z","message":{"role":"assistant","content":"Hi"},
            "done":true,"total_duration":5191566416,"prompt_eval_count":26,"eval_count":298}"#;
        scan(BodyFormat::Json, body, usage(26, 298));
        let stream = "{\"model\":\"qwen2.5-coder\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n\
            {\"model\":\"qwen2.5-coder\",\"message\":{\"role\":\"assistant\",\"content\":\"!\"},\"done\":false}\n\
            {\"model\":\"qwen2.5-coder\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\
            \"done_reason\":\"stop\",\"prompt_eval_count\":12,\"eval_count\":2}\n";
        scan(BodyFormat::Json, stream, usage(12, 2));
        // Without the last newline as well.
        scan(BodyFormat::Json, stream.trim_end(), usage(12, 2));
    }

    #[test]
    fn responses_without_usage_are_unknown() {
        scan(
            BodyFormat::Json,
            r#"{"error":{"message":"no","type":"x"}}"#,
            Usage::default(),
        );
        scan(BodyFormat::Json, "not json at all", Usage::default());
        scan(
            BodyFormat::EventStream,
            "data: [DONE]\n\n",
            Usage::default(),
        );
        assert!(!Usage::default().is_known());
    }

    #[test]
    fn memory_stays_bounded_and_large_bodies_keep_their_usage() {
        // A long single-line answer (no newline until the end): the line is dropped, the
        // tail still has the usage.
        let text = "x".repeat(3 << 20);
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"{text}"}}}}],"usage":{{"prompt_tokens":3,"completion_tokens":900000}}}}"#
        );
        let mut s = UsageScanner::new(BodyFormat::Json);
        for chunk in body.as_bytes().chunks(16 << 10) {
            s.feed(chunk);
            assert!(s.body.len() <= MAX_BODY + (16 << 10));
            assert!(s.line.len() <= MAX_LINE);
        }
        assert_eq!(s.finish(), usage(3, 900_000));
        // An event stream with a huge event: skipped, the later usage event still counts.
        let mut s = UsageScanner::new(BodyFormat::EventStream);
        s.feed(b"data: {\"big\":\"");
        for _ in 0..64 {
            s.feed(&[b'y'; 16 << 10]);
            assert!(s.line.len() <= MAX_LINE && s.data.len() <= MAX_LINE);
        }
        s.feed(b"\"}\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n");
        assert_eq!(s.finish(), usage(1, 2));
    }

    #[test]
    fn reports_serialize_as_the_daemon_expects() {
        let r = UsageReport {
            cmd: "model_usage",
            pid: 7,
            provider: "openai".into(),
            model: Some("gpt-4o-mini".into()),
            api: "openai",
            dest: None,
            input_tokens: None,
            output_tokens: None,
            agent: None,
            caller: Value::Null,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"cmd":"model_usage","pid":7,"provider":"openai","model":"gpt-4o-mini","api":"openai","input_tokens":null,"output_tokens":null}"#
        );
    }
}
