//! Asking oknekd for a verdict: one JSON line over `control.sock` per model call.
//!
//! The daemon identifies the caller from the pid (uid, executable and its sha256, unit, agent),
//! judges the `model_call` against the rules and records a signed bundle for every decision.
//! The gateway only carries out the verdict.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `{"cmd":"model_call",…}` as the daemon's control protocol defines it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCallRequest<'a> {
    pub cmd: &'static str,
    pub pid: u32,
    pub provider: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub api: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Warn,
    Block,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FiredRule {
    pub id: String,
    #[serde(default)]
    pub title: String,
    pub action: String,
    /// The quota state when the rule has a quota (present when the daemon reports it).
    #[serde(default)]
    pub quota: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    #[serde(default)]
    pub rules: Vec<FiredRule>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub caller: serde_json::Value,
}

impl Decision {
    /// The rule that decided a block: the first fired block rule.
    pub fn deciding_block(&self) -> Option<&FiredRule> {
        self.rules.iter().find(|r| r.action == "block")
    }

    /// Whether the call was refused because a quota ran out (HTTP 429 rather than 403).
    pub fn quota_exhausted(&self) -> bool {
        self.deciding_block().is_some_and(|r| r.quota.is_some())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("cannot reach oknekd at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("oknekd did not answer: {0}")]
    Io(#[from] std::io::Error),
    #[error("oknekd refused the request: {0}")]
    Refused(String),
    #[error("oknekd sent an answer the gateway does not understand: {0}")]
    BadAnswer(String),
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
}

/// One question to the daemon. Every error means "no verdict": the caller refuses the call.
pub fn ask(
    control: &Path,
    request: &ModelCallRequest<'_>,
    timeout: Duration,
) -> Result<Decision, AuthzError> {
    serde_json::from_value(send(control, request, timeout)?)
        .map_err(|e| AuthzError::BadAnswer(e.to_string()))
}

/// Sends one control request and returns the `result` of a successful answer.
pub fn send(
    control: &Path,
    request: &impl Serialize,
    timeout: Duration,
) -> Result<serde_json::Value, AuthzError> {
    let mut stream = UnixStream::connect(control).map_err(|source| AuthzError::Connect {
        path: control.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request).map_err(|e| AuthzError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    // An answer is a few hundred bytes; the bound keeps a confused peer from filling memory.
    BufReader::new(std::io::Read::take(stream, 64 << 10)).read_line(&mut answer)?;
    let envelope: Envelope =
        serde_json::from_str(&answer).map_err(|e| AuthzError::BadAnswer(e.to_string()))?;
    if !envelope.ok {
        return Err(AuthzError::Refused(
            envelope.error.unwrap_or_else(|| "no reason given".into()),
        ));
    }
    Ok(envelope.result.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_quota_blocks_are_recognised() {
        let d: Decision = serde_json::from_str(
            r#"{"verdict":"block","rules":[{"id":"R6.hours","title":"t","action":"warn"},
                {"id":"q","title":"t","action":"block","quota":{"limit":3}}],"agent":"a",
                "caller":{"pid":1}}"#,
        )
        .unwrap();
        assert_eq!(d.verdict, Verdict::Block);
        assert_eq!(d.deciding_block().unwrap().id, "q");
        assert!(d.quota_exhausted());
        let d: Decision = serde_json::from_str(r#"{"verdict":"allow"}"#).unwrap();
        assert!(d.rules.is_empty() && !d.quota_exhausted());
    }

    #[test]
    fn an_absent_daemon_is_an_error() {
        let req = ModelCallRequest {
            cmd: "model_call",
            pid: 1,
            provider: "p",
            model: None,
            api: "openai",
            dest: None,
        };
        let e = ask(
            Path::new("/nonexistent/control.sock"),
            &req,
            Duration::from_secs(1),
        );
        assert!(matches!(e, Err(AuthzError::Connect { .. })));
    }
}
