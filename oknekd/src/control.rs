//! The control socket (`<runtime>/control.sock`): the CLI's way in.
//!
//! One JSON request line per connection, one JSON response line back. Only root and members of
//! the configured control group get an answer; the check uses the kernel's peer credentials
//! (`SO_PEERCRED`), so an agent running as an ordinary user can neither unblock itself nor stop
//! the daemon through this socket.
//!
//! ```text
//! → {"cmd":"status"}
//! ← {"ok":true,"result":{…}}
//! → {"cmd":"allow","pid":4242}
//! ← {"ok":false,"error":"pid 4242 is not held"}
//! ```

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use crate::sys;

/// Requests larger than this are refused: no command needs more.
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Braces, not unit variants: serde only rejects unknown fields on struct variants.
    Status {},
    Reload {},
    Agents {},
    Doctor {},
    /// Release a held agent process (SIGCONT).
    Allow {
        pid: u32,
    },
    /// Kill a held agent's process tree and block that agent until cleared.
    Block {
        pid: u32,
    },
    /// Clear a permanent block of an agent.
    Unblock {
        agent: String,
    },
    /// Authorise a model call before it is made (the model gateway asks).
    ModelCall(ModelCallRequest),
    /// Charge the tokens a model call's response reported to the caller's token budgets.
    ModelUsage(ModelUsageRequest),
}

/// `{"cmd":"model_usage","pid":4242,"provider":"openai","model":"gpt-4o-mini","api":"openai",
/// "dest":"127.0.0.1:8080","input_tokens":12,"output_tokens":30}` →
/// `{"tokens":42,"charged":[{"rule","quota"}]}`. Sent by the model gateway after a response
/// completed. Both token counts absent: the response reported no usage (recorded as unknown,
/// nothing charged). `agent` and `caller` echo the daemon's answer to the call's `model_call`,
/// so usage is charged to the caller that was judged even when its process has exited since.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelUsageRequest {
    pub pid: u32,
    pub provider: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub api: Option<String>,
    #[serde(default)]
    pub dest: Option<String>,
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub caller: Option<CallerEcho>,
}

/// The `caller` of a `model_call` answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CallerEcho {
    pub uid: u32,
    pub exe: String,
    #[serde(default)]
    pub exe_sha256: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
}

/// `{"cmd":"model_call","pid":4242,"provider":"openai","model":"gpt-4o-mini","api":"openai",
/// "dest":"127.0.0.1:8080"}` → `{"verdict":"allow|warn|block","rules":[{"id","title","action"}],
/// "agent":…,"caller":{…}}`. The caller is identified by pid (from the kernel's peer
/// credentials of its connection to the gateway), never by what it claims.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCallRequest {
    pub pid: u32,
    pub provider: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub api: Option<String>,
    /// The upstream address the call goes to, `ip:port`.
    #[serde(default)]
    pub dest: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Response {
        Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// Whether the peer may use the control socket.
pub fn authorised(stream: &UnixStream, control_gid: u32) -> Result<sys::PeerCred, String> {
    let cred = sys::peer_cred(stream.as_raw_fd()).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    if cred.uid == 0 {
        return Ok(cred);
    }
    if control_gid != 0
        && (cred.gid == control_gid || sys::groups_of(cred.pid).contains(&control_gid))
    {
        return Ok(cred);
    }
    Err(format!(
        "uid {} may not use the control socket (root or group {control_gid} only)",
        cred.uid
    ))
}

/// Reads one request line from a connection that has data. `Ok(None)`: not complete yet.
pub fn read_request(stream: &mut UnixStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_REQUEST {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "request too large",
                    ));
                }
                if buf.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !buf.contains(&b'\n') {
                    return Ok(None);
                }
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    serde_json::from_slice(line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad request: {e}")))
}

/// Writes the response line; a client that went away is not an error worth more than a log line.
pub fn write_response(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(std::time::Duration::from_millis(200)))?;
    stream.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_reject_extras() {
        let r: Request = serde_json::from_str(r#"{"cmd":"allow","pid":42}"#).unwrap();
        assert_eq!(r, Request::Allow { pid: 42 });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"allow","pid":-1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"shutdown"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).is_err());
    }

    #[test]
    fn oversized_and_garbage_requests_fail_cleanly() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&vec![b'x'; MAX_REQUEST + 10]).unwrap();
        let mut buf = Vec::new();
        assert!(read_request(&mut a, &mut buf).is_err());
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"\x00\xff garbage\n").unwrap();
        let mut buf = Vec::new();
        assert!(read_request(&mut a, &mut buf).is_err());
    }

    #[test]
    fn root_is_authorised() {
        let (a, _b) = UnixStream::pair().unwrap();
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        assert_eq!(authorised(&a, 0).is_ok(), root);
    }
}
