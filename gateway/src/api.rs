//! What differs between provider APIs: where the model is named, how errors look, where token
//! usage is reported.

use serde_json::{Value, json};

use crate::providers::ApiStyle;

/// The model a request asks for: the JSON body's `model` field, or for APIs that name it in
/// the path (Google `…/models/NAME:generateContent`, Bedrock `/model/ID/invoke`, Azure OpenAI
/// `/openai/deployments/NAME/…`) that path segment.
pub fn model_of(api: ApiStyle, path: &str, body: &[u8]) -> Option<String> {
    let path = path.split('?').next().unwrap_or(path);
    let from_path = match api {
        ApiStyle::Google => {
            segment_after(path, "models").map(|m| m.split(':').next().unwrap_or(m).to_owned())
        }
        ApiStyle::Bedrock => segment_after(path, "model").map(percent_decode),
        ApiStyle::Openai => segment_after(path, "deployments").map(str::to_owned),
        ApiStyle::Anthropic | ApiStyle::Ollama => None,
    };
    if from_path.is_some() {
        return from_path;
    }
    if body.is_empty() {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let m = v.get("model")?.as_str()?;
    (!m.is_empty()).then(|| m.to_owned())
}

fn segment_after<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    let mut parts = path.split('/');
    parts.find(|p| *p == key)?;
    parts.next().filter(|m| !m.is_empty())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why the gateway answers instead of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A rule blocked the call.
    Forbidden,
    /// A quota rule blocked the call.
    RateLimited,
    /// No verdict could be had (daemon down, caller unidentifiable): fail closed.
    Unavailable,
    /// The path names no configured provider.
    NotFound,
    TooLarge,
    BadRequest,
    /// The provider could not be reached.
    BadGateway,
}

impl Refusal {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::Forbidden => (403, "Forbidden"),
            Refusal::RateLimited => (429, "Too Many Requests"),
            Refusal::Unavailable => (503, "Service Unavailable"),
            Refusal::NotFound => (404, "Not Found"),
            Refusal::TooLarge => (413, "Payload Too Large"),
            Refusal::BadRequest => (400, "Bad Request"),
            Refusal::BadGateway => (502, "Bad Gateway"),
        }
    }
}

/// The error body the provider's own SDKs parse and surface (`e.message`, `e.body`).
pub fn error_body(api: ApiStyle, refusal: Refusal, message: &str) -> Value {
    let (status, _) = refusal.status();
    match api {
        ApiStyle::Openai => {
            let (kind, code) = match refusal {
                Refusal::Forbidden => ("permission_denied", "model_call_blocked"),
                Refusal::RateLimited => ("rate_limit_exceeded", "model_call_quota_exceeded"),
                Refusal::Unavailable => ("server_error", "model_call_unauthorised"),
                Refusal::NotFound => ("invalid_request_error", "unknown_provider"),
                Refusal::TooLarge => ("invalid_request_error", "request_too_large"),
                Refusal::BadRequest => ("invalid_request_error", "bad_request"),
                Refusal::BadGateway => ("server_error", "upstream_unreachable"),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        ApiStyle::Anthropic => {
            let kind = match refusal {
                Refusal::Forbidden => "permission_error",
                Refusal::RateLimited => "rate_limit_error",
                Refusal::Unavailable | Refusal::BadGateway => "api_error",
                Refusal::NotFound => "not_found_error",
                Refusal::TooLarge => "request_too_large",
                Refusal::BadRequest => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        ApiStyle::Google => {
            let kind = match refusal {
                Refusal::Forbidden => "PERMISSION_DENIED",
                Refusal::RateLimited => "RESOURCE_EXHAUSTED",
                Refusal::Unavailable | Refusal::BadGateway => "UNAVAILABLE",
                Refusal::NotFound => "NOT_FOUND",
                Refusal::TooLarge | Refusal::BadRequest => "INVALID_ARGUMENT",
            };
            json!({"error": {"code": status, "message": message, "status": kind}})
        }
        ApiStyle::Bedrock => json!({"message": message}),
        ApiStyle::Ollama => json!({"error": message}),
    }
}

/// Token counts a response reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

impl Usage {
    /// Adds what one JSON object (a whole response or one SSE event) reports: OpenAI's
    /// `usage.prompt_tokens/completion_tokens`, Anthropic's `usage.input_tokens/output_tokens`
    /// (also inside `message` of `message_start`), Ollama's `prompt_eval_count/eval_count`,
    /// Google's `usageMetadata`. Anthropic streams repeat cumulative output counts: the largest
    /// value seen wins.
    pub fn absorb(&mut self, v: &Value) {
        let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let mut take = |input: Option<u64>, output: Option<u64>| {
            if let Some(i) = input {
                self.input = self.input.max(i);
            }
            if let Some(o) = output {
                self.output = self.output.max(o);
            }
        };
        for usage in [
            v.get("usage"),
            v.get("message").and_then(|m| m.get("usage")),
        ]
        .into_iter()
        .flatten()
        {
            take(
                num(usage, "prompt_tokens").or_else(|| num(usage, "input_tokens")),
                num(usage, "completion_tokens").or_else(|| num(usage, "output_tokens")),
            );
        }
        take(num(v, "prompt_eval_count"), num(v, "eval_count"));
        if let Some(m) = v.get("usageMetadata") {
            take(num(m, "promptTokenCount"), num(m, "candidatesTokenCount"));
        }
    }
}

/// Collects usage from a response body as it streams by: a JSON body is parsed at the end; an
/// event stream line by line (`data: {…}`). Bounded: at most `LIMIT` bytes are kept.
#[derive(Debug, Default)]
pub struct UsageTap {
    buf: Vec<u8>,
    sse: bool,
    overflow: bool,
    pub usage: Usage,
}

const LIMIT: usize = 1 << 20;

impl UsageTap {
    pub fn new(event_stream: bool) -> UsageTap {
        UsageTap {
            sse: event_stream,
            ..UsageTap::default()
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.sse {
            while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(data) = line.strip_prefix(b"data:")
                    && let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii())
                {
                    self.usage.absorb(&v);
                }
            }
        }
        if self.buf.len() > LIMIT {
            self.overflow = true;
            self.buf = Vec::new();
        }
    }

    pub fn finish(mut self) -> Usage {
        if !self.sse && !self.overflow {
            // Ollama streams newline-delimited JSON objects; one JSON body is the single case.
            for line in self.buf.split(|&b| b == b'\n') {
                if let Ok(v) = serde_json::from_slice::<Value>(line.trim_ascii()) {
                    self.usage.absorb(&v);
                }
            }
        }
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_come_from_body_or_path() {
        let body = br#"{"model":"gpt-4o-mini","messages":[]}"#;
        assert_eq!(
            model_of(ApiStyle::Openai, "/v1/chat/completions", body).as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            model_of(
                ApiStyle::Openai,
                "/openai/deployments/prod-4o/chat/completions?api-version=1",
                b"{}"
            )
            .as_deref(),
            Some("prod-4o")
        );
        assert_eq!(
            model_of(
                ApiStyle::Google,
                "/v1beta/models/gemini-2.0-flash:generateContent",
                b""
            )
            .as_deref(),
            Some("gemini-2.0-flash")
        );
        assert_eq!(
            model_of(
                ApiStyle::Bedrock,
                "/model/anthropic.claude-3%3A0/invoke",
                b""
            )
            .as_deref(),
            Some("anthropic.claude-3:0")
        );
        assert_eq!(
            model_of(ApiStyle::Anthropic, "/v1/messages", b"not json"),
            None
        );
        assert_eq!(
            model_of(ApiStyle::Ollama, "/api/chat", br#"{"model":""}"#),
            None
        );
    }

    #[test]
    fn error_shapes_are_the_providers_own() {
        let o = error_body(ApiStyle::Openai, Refusal::Forbidden, "no");
        assert_eq!(o["error"]["message"], "no");
        assert_eq!(o["error"]["type"], "permission_denied");
        let a = error_body(ApiStyle::Anthropic, Refusal::RateLimited, "later");
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "rate_limit_error");
        let g = error_body(ApiStyle::Google, Refusal::Forbidden, "no");
        assert_eq!(g["error"]["status"], "PERMISSION_DENIED");
        assert_eq!(g["error"]["code"], 403);
    }

    #[test]
    fn usage_from_bodies_and_streams() {
        let mut tap = UsageTap::new(false);
        tap.feed(br#"{"usage":{"prompt_tokens":12,"#);
        tap.feed(br#""completion_tokens":5}}"#);
        assert_eq!(
            tap.finish(),
            Usage {
                input: 12,
                output: 5
            }
        );
        let mut tap = UsageTap::new(true);
        tap.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n");
        tap.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_to");
        tap.feed(b"kens\":7}}\r\n\r\ndata: [DONE]\n\n");
        assert_eq!(
            tap.finish(),
            Usage {
                input: 9,
                output: 7
            }
        );
    }
}
