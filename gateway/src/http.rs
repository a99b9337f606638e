//! HTTP/1.1 framing: reading a client's request (bounded), writing a request upstream, and
//! relaying a response back byte for byte while finding where it ends.
//!
//! Heads are parsed with `httparse`; bodies are framed by Content-Length or chunked encoding.
//! Response bodies are relayed as they arrive, never buffered whole, so server-sent events
//! reach the client with the provider's own timing and bytes.

use std::io::{self, Read, Write};

/// Heads larger than this are refused.
pub const MAX_HEAD: usize = 64 << 10;
const MAX_HEADERS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// A buffered reader over a stream that hands out whole heads and exact body lengths.
pub struct Conn<S> {
    pub stream: S,
    buf: Vec<u8>,
    start: usize,
}

impl<S: Read> Conn<S> {
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::with_capacity(16 << 10),
            start: 0,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more; `Ok(0)` at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + (16 << 10), 0);
        loop {
            match self.stream.read(&mut self.buf[len..]) {
                Ok(n) => {
                    self.buf.truncate(len + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        }
    }

    /// Reads until a blank line ends the head; returns the head's bytes (consumed).
    /// `Closed` when the stream ends before any byte of a new head.
    pub fn read_head(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut searched = 0;
        loop {
            let data = self.buffered();
            if let Some(end) = find_blank_line(data, searched) {
                let head = data[..end].to_vec();
                self.consume(end);
                return Ok(head);
            }
            if data.len() > MAX_HEAD {
                return Err(HttpError::Malformed("head too large".into()));
            }
            searched = data.len().saturating_sub(3);
            let had = data.len();
            if self.fill()? == 0 {
                return Err(if had == 0 {
                    HttpError::Closed
                } else {
                    HttpError::Malformed("connection closed inside a head".into())
                });
            }
        }
    }

    /// Exactly `n` bytes (bounded by the caller).
    pub fn read_exact_body(&mut self, n: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.buffered().is_empty() && self.fill()? == 0 {
                return Err(HttpError::Malformed(
                    "connection closed inside a body".into(),
                ));
            }
            let take = (n - out.len()).min(self.buffered().len());
            out.extend_from_slice(&self.buffered()[..take]);
            self.consume(take);
        }
        Ok(out)
    }

    /// A line ending in CRLF (without it), for chunk sizes and trailers.
    fn read_line(&mut self) -> Result<Vec<u8>, HttpError> {
        loop {
            if let Some(pos) = self.buffered().windows(2).position(|w| w == b"\r\n") {
                let line = self.buffered()[..pos].to_vec();
                self.consume(pos + 2);
                return Ok(line);
            }
            if self.buffered().len() > 4096 {
                return Err(HttpError::Malformed("chunk line too long".into()));
            }
            if self.fill()? == 0 {
                return Err(HttpError::Malformed(
                    "connection closed inside chunked body".into(),
                ));
            }
        }
    }

    /// A chunked body, decoded, bounded by `limit`.
    pub fn read_chunked_body(&mut self, limit: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = chunk_size(&line)?;
            if size == 0 {
                // Trailers, up to the blank line.
                while !self.read_line()?.is_empty() {}
                return Ok(out);
            }
            if out.len() + size > limit {
                return Err(HttpError::TooLarge { limit });
            }
            out.extend_from_slice(&self.read_exact_body(size)?);
            if !self.read_line()?.is_empty() {
                return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
            }
        }
    }

    /// Relays a response body to `out` as it arrives, calling `tap` with the payload bytes.
    /// Returns whether the upstream connection can be reused.
    pub fn relay_body(
        &mut self,
        framing: Framing,
        out: &mut impl Write,
        tap: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, HttpError> {
        match framing {
            Framing::None => Ok(true),
            Framing::Length(mut left) => {
                while left > 0 {
                    if self.buffered().is_empty() && self.fill()? == 0 {
                        return Err(HttpError::Malformed("upstream closed inside a body".into()));
                    }
                    let take = (left as usize).min(self.buffered().len());
                    let bytes = &self.buf[self.start..self.start + take];
                    out.write_all(bytes)?;
                    tap(bytes);
                    self.consume(take);
                    out.flush()?;
                    left -= take as u64;
                }
                Ok(true)
            }
            Framing::Chunked => {
                loop {
                    let line = self.read_line()?;
                    let size = chunk_size(&line)?;
                    out.write_all(&line)?;
                    out.write_all(b"\r\n")?;
                    if size == 0 {
                        loop {
                            let trailer = self.read_line()?;
                            out.write_all(&trailer)?;
                            out.write_all(b"\r\n")?;
                            if trailer.is_empty() {
                                out.flush()?;
                                return Ok(true);
                            }
                        }
                    }
                    let mut left = size;
                    while left > 0 {
                        if self.buffered().is_empty() && self.fill()? == 0 {
                            return Err(HttpError::Malformed(
                                "upstream closed inside a chunk".into(),
                            ));
                        }
                        let take = left.min(self.buffered().len());
                        let bytes = &self.buf[self.start..self.start + take];
                        out.write_all(bytes)?;
                        tap(bytes);
                        self.consume(take);
                        left -= take;
                    }
                    let crlf = self.read_line()?;
                    if !crlf.is_empty() {
                        return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
                    }
                    out.write_all(b"\r\n")?;
                    // Each chunk goes out as it came: an event stream must not wait for more.
                    out.flush()?;
                }
            }
            Framing::UntilClose => loop {
                if self.buffered().is_empty() && self.fill()? == 0 {
                    out.flush()?;
                    return Ok(false);
                }
                let bytes = &self.buf[self.start..];
                out.write_all(bytes)?;
                tap(bytes);
                let n = bytes.len();
                self.consume(n);
                out.flush()?;
            },
        }
    }
}

fn find_blank_line(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

fn chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    let hex = line.split(|&b| b == b';').next().unwrap_or(&[]);
    let hex = std::str::from_utf8(hex)
        .map_err(|_| HttpError::Malformed("chunk size".into()))?
        .trim();
    usize::from_str_radix(hex, 16)
        .ok()
        .filter(|&n| n < (1 << 40))
        .ok_or_else(|| HttpError::Malformed(format!("chunk size {hex:?}")))
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed request head (owned).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub minor_version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    pub fn parse(head: &[u8]) -> Result<Request, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(HttpError::Malformed("partial head".into()));
            }
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
        Ok(Request {
            method: req.method.unwrap_or("").to_owned(),
            target: req.path.unwrap_or("").to_owned(),
            minor_version: req.version.unwrap_or(1),
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect(),
        })
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .any(|(_, v)| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
    }

    /// Whether the client wants the connection kept after this exchange.
    pub fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }

    pub fn expects_continue(&self) -> bool {
        self.has_token("expect", "100-continue")
    }

    /// The body's framing; a request has no close-delimited body.
    pub fn framing(&self) -> Result<Framing, HttpError> {
        if self.headers.iter().any(|(n, _)| n == "transfer-encoding") {
            if self.has_token("transfer-encoding", "chunked") {
                return Ok(Framing::Chunked);
            }
            return Err(HttpError::Malformed("unsupported transfer-encoding".into()));
        }
        let lengths: Vec<&[u8]> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_slice())
            .collect();
        match lengths.as_slice() {
            [] => Ok(Framing::None),
            [one] => std::str::from_utf8(one)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(Framing::Length)
                .ok_or_else(|| HttpError::Malformed("content-length".into())),
            // Two lengths are how request smuggling starts: refuse.
            _ => Err(HttpError::Malformed("more than one content-length".into())),
        }
    }
}

/// Headers that belong to one hop and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "expect",
    // The gateway reads token usage from responses: it asks for them uncompressed.
    "accept-encoding",
];

/// The request as sent upstream: same method and headers (less hop-by-hop ones), the target
/// rewritten to the provider's path, `Host` set to the provider, and the buffered body.
pub fn upstream_request(req: &Request, target: &str, host: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + body.len());
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &req.headers {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || !matches!(req.method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"accept-encoding: identity\r\nconnection: keep-alive\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// What the gateway needs from a response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// The upstream said it closes the connection after this response.
    pub closes: bool,
    pub event_stream: bool,
}

impl ResponseHead {
    pub fn parse(head: &[u8], request_method: &str) -> Result<ResponseHead, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(HttpError::Malformed("partial head".into()));
            }
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
        let status = resp.code.unwrap_or(0);
        let value = |name: &str| {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                .collect::<Vec<_>>()
        };
        let closes =
            value("connection").iter().any(|v| v.contains("close")) || resp.version == Some(0);
        let event_stream = value("content-type")
            .iter()
            .any(|v| v.starts_with("text/event-stream"));
        let framing = if request_method == "HEAD"
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            Framing::None
        } else if value("transfer-encoding")
            .iter()
            .any(|v| v.contains("chunked"))
        {
            Framing::Chunked
        } else if let Some(n) = value("content-length").first() {
            Framing::Length(
                n.trim()
                    .parse()
                    .map_err(|_| HttpError::Malformed("content-length".into()))?,
            )
        } else {
            Framing::UntilClose
        };
        Ok(ResponseHead {
            status,
            framing,
            closes,
            event_stream,
        })
    }
}

/// A complete response the gateway writes itself (refusals). `x-should-retry: false` tells the
/// OpenAI and Anthropic SDKs not to retry a refusal (they would retry 429 and 503 otherwise).
pub fn simple_response(status: u16, reason: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-oknek-gateway: refused\r\nx-should-retry: false\r\n{}\r\n",
        body.len(),
        if keep_alive {
            ""
        } else {
            "connection: close\r\n"
        }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_bodies_are_read_exactly() {
        let raw = b"POST /openai/v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n";
        let mut c = Conn::new(&raw[..]);
        let req = Request::parse(&c.read_head().unwrap()).unwrap();
        assert_eq!(req.target, "/openai/v1/x");
        assert_eq!(req.framing().unwrap(), Framing::Length(5));
        assert_eq!(c.read_exact_body(5).unwrap(), b"hello");
        let req = Request::parse(&c.read_head().unwrap()).unwrap();
        assert_eq!(req.method, "GET");
        assert!(matches!(c.read_head(), Err(HttpError::Closed)));
    }

    #[test]
    fn chunked_requests_decode_and_are_bounded() {
        let raw = b"4\r\nabcd\r\n3;x=1\r\nefg\r\n0\r\nT: 1\r\n\r\n";
        let mut c = Conn::new(&raw[..]);
        assert_eq!(c.read_chunked_body(100).unwrap(), b"abcdefg");
        let mut c = Conn::new(&raw[..]);
        assert!(matches!(
            c.read_chunked_body(5),
            Err(HttpError::TooLarge { .. })
        ));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let req =
            Request::parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .unwrap();
        assert!(req.framing().is_err());
        let req = Request::parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap();
        assert!(req.framing().is_err());
    }

    #[test]
    fn chunked_responses_relay_unchanged() {
        let body = b"5\r\ndata:\r\n2\r\n x\r\n0\r\n\r\n";
        let mut c = Conn::new(&body[..]);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let reusable = c
            .relay_body(Framing::Chunked, &mut out, &mut |b| {
                seen.extend_from_slice(b)
            })
            .unwrap();
        assert!(reusable);
        assert_eq!(out, body);
        assert_eq!(seen, b"data: x");
    }

    #[test]
    fn upstream_requests_drop_hop_headers() {
        let req = Request::parse(
            b"POST /openai/v1/chat HTTP/1.1\r\nHost: 127.0.0.1:8088\r\nConnection: close\r\n\
              Authorization: Bearer k\r\nContent-Length: 2\r\nAccept-Encoding: gzip\r\n\r\n",
        )
        .unwrap();
        let out = upstream_request(&req, "/v1/chat", "api.openai.test", b"{}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /v1/chat HTTP/1.1\r\nhost: api.openai.test\r\n"));
        assert!(text.contains("authorization: Bearer k\r\n"));
        assert!(text.contains("content-length: 2\r\n"));
        assert!(!text.contains("gzip") && !text.contains("close"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }
}
