//! What differs between provider APIs: where the model is named, how errors look. (Where token
//! usage is reported: [`crate::usage`].)

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
}
