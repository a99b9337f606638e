//! The requests an agent writes on one plaintext HTTP/1.1 connection, followed byte by byte as
//! they are sent, so the model each request names is known before the bytes that complete it
//! leave.
//!
//! [`RequestStream`] frames the connection the way the server will: request line and header
//! fields, then a body of `Content-Length` bytes or in chunks (`Transfer-Encoding: chunked`,
//! de-chunked here), and no body when neither is given (RFC 9112 §6.3: a request without them
//! has none). Each request's body goes through a fresh [`ModelScanner`], so keep-alive and
//! pipelined requests are each read from their own start. A request whose framing cannot be
//! followed (conflicting lengths, an unknown transfer coding, obsolete line folding, oversized
//! header fields) ends the reading of the connection: a server answers such requests with an
//! error, and nothing after them is attributed to a request.

use crate::plaintext::ModelScanner;

/// Longest header field or chunk-size line followed.
const MAX_LINE: usize = 8 * 1024;
/// Longest request head (request line and fields) or trailer section followed.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// The request line and the header fields, up to the empty line.
    Head,
    /// A body of known length: the bytes still to come.
    Body { left: u64 },
    /// A chunked body, at a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data.
    ChunkData { left: u64 },
    /// The line end after a chunk's data.
    ChunkEnd,
    /// The trailer fields after the last chunk, up to the empty line.
    Trailers,
    /// The connection is no longer followed.
    Lost,
}

/// One connection's outgoing byte stream, request by request.
#[derive(Debug, Clone)]
pub struct RequestStream {
    framing: Framing,
    /// The line being read (head, chunk size, trailers), bounded by [`MAX_LINE`].
    line: Vec<u8>,
    /// Bytes of the current head or trailer section so far.
    section_bytes: usize,
    /// The request line has been read (empty lines before it are skipped).
    request_line_seen: bool,
    content_length: Option<u64>,
    chunked: bool,
    /// The head has a field that makes its framing unknowable.
    unframeable: bool,
    scanner: ModelScanner,
}

impl Default for RequestStream {
    fn default() -> Self {
        RequestStream::new()
    }
}

impl RequestStream {
    /// A connection at the start of a request.
    pub fn new() -> RequestStream {
        RequestStream {
            framing: Framing::Head,
            line: Vec::new(),
            section_bytes: 0,
            request_line_seen: false,
            content_length: None,
            chunked: false,
            unframeable: false,
            scanner: ModelScanner::new(),
        }
    }

    /// True once the connection cannot be followed any more.
    #[cfg(test)]
    pub fn lost(&self) -> bool {
        self.framing == Framing::Lost
    }

    /// Reads the next bytes sent on the connection; appends to `models` the model of every
    /// request whose `"model"` these bytes completed.
    pub fn feed(&mut self, bytes: &[u8], models: &mut Vec<String>) {
        let mut rest = bytes;
        while !rest.is_empty() {
            rest = match self.framing {
                Framing::Lost => return,
                Framing::Head | Framing::ChunkSize | Framing::Trailers => self.line_bytes(rest),
                Framing::Body { left } => {
                    let (now, later) = split(rest, left);
                    self.body(now, models);
                    let left = left - now.len() as u64;
                    self.framing = Framing::Body { left };
                    if left == 0 {
                        self.next_request();
                    }
                    later
                }
                Framing::ChunkData { left } => {
                    let (now, later) = split(rest, left);
                    self.body(now, models);
                    let left = left - now.len() as u64;
                    self.framing = if left == 0 {
                        Framing::ChunkEnd
                    } else {
                        Framing::ChunkData { left }
                    };
                    later
                }
                Framing::ChunkEnd => match rest[0] {
                    b'\r' => &rest[1..],
                    b'\n' => {
                        self.framing = Framing::ChunkSize;
                        &rest[1..]
                    }
                    _ => {
                        self.framing = Framing::Lost;
                        return;
                    }
                },
            };
        }
    }

    fn body(&mut self, bytes: &[u8], models: &mut Vec<String>) {
        if let Some(model) = self.scanner.feed(bytes) {
            models.push(model.to_owned());
        }
    }

    /// Consumes bytes of a line-based section up to and including the next line end.
    fn line_bytes<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let (line, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => (&bytes[..i], &bytes[i + 1..], true),
            None => (bytes, &bytes[bytes.len()..], false),
        };
        self.section_bytes += line.len() + usize::from(complete);
        if self.line.len() + line.len() > MAX_LINE || self.section_bytes > MAX_HEAD {
            self.framing = Framing::Lost;
            return &bytes[bytes.len()..];
        }
        self.line.extend_from_slice(line);
        if complete {
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            match self.framing {
                Framing::Head => self.head_line(&line),
                Framing::ChunkSize => self.chunk_size_line(&line),
                Framing::Trailers if line.is_empty() => self.next_request(),
                _ => {}
            }
        }
        rest
    }

    fn head_line(&mut self, line: &[u8]) {
        if !self.request_line_seen {
            // Empty lines before the request line are skipped, as servers do.
            self.request_line_seen = !line.is_empty();
            return;
        }
        if line.is_empty() {
            return self.end_of_head();
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Obsolete line folding: servers reject it or fold it differently.
            self.unframeable = true;
            return;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            self.unframeable = true;
            return;
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (parsed, self.content_length) {
                (Some(n), None) => self.content_length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => self.unframeable = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().map(trim);
            if last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) {
                self.chunked = true;
            } else {
                self.unframeable = true;
            }
        }
    }

    fn end_of_head(&mut self) {
        // The scanner reads a body after the end of a head; the fields themselves are not its
        // business.
        self.scanner.feed(b"\r\n\r\n");
        self.section_bytes = 0;
        self.framing = if self.unframeable {
            Framing::Lost
        } else if self.chunked {
            // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
            Framing::ChunkSize
        } else {
            match self.content_length {
                Some(left) if left > 0 => Framing::Body { left },
                _ => return self.next_request(),
            }
        };
    }

    fn chunk_size_line(&mut self, line: &[u8]) {
        let digits = trim(line.split(|&b| b == b';').next().unwrap_or_default());
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.len() <= 15)
            .and_then(|d| u64::from_str_radix(d, 16).ok());
        self.framing = match size {
            Some(0) => {
                self.section_bytes = 0;
                Framing::Trailers
            }
            Some(left) => Framing::ChunkData { left },
            None => Framing::Lost,
        };
    }

    fn next_request(&mut self) {
        *self = RequestStream::new();
    }
}

fn split(bytes: &[u8], at_most: u64) -> (&[u8], &[u8]) {
    bytes.split_at((at_most.min(bytes.len() as u64)) as usize)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &str) -> Vec<u8> {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:11434\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn models_of(stream: &mut RequestStream, pieces: &[&[u8]]) -> Vec<Vec<String>> {
        pieces
            .iter()
            .map(|p| {
                let mut found = Vec::new();
                stream.feed(p, &mut found);
                found
            })
            .collect()
    }

    #[test]
    fn keep_alive_requests_are_each_read_from_their_start() {
        let mut s = RequestStream::new();
        let get = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
        let first = post(r#"{"model":"llama3.2","messages":[]}"#);
        let second = post(r#"{"messages":[{"role":"user","content":"hi"}],"model":"qwen"}"#);
        let found = models_of(&mut s, &[get, &first, &second]);
        assert_eq!(
            found,
            [vec![], vec!["llama3.2".to_owned()], vec!["qwen".into()]]
        );
    }

    #[test]
    fn pipelined_requests_in_one_write_are_all_read() {
        let mut s = RequestStream::new();
        let mut both = post(r#"{"model":"allowed"}"#);
        both.extend(post(r#"{"model":"evil"}"#));
        assert_eq!(models_of(&mut s, &[&both]), [vec!["allowed", "evil"]]);
    }

    #[test]
    fn every_split_of_a_request_finds_its_model_once() {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"mistral:7b"}}"#,
            "x".repeat(3000)
        );
        let req = post(&body);
        for cut in [1, 7, 100, 512, 3001, req.len() - 3, req.len() - 1] {
            let mut s = RequestStream::new();
            let found: Vec<String> = models_of(&mut s, &[&req[..cut], &req[cut..]])
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(found, ["mistral:7b"], "cut at {cut}");
        }
        let mut s = RequestStream::new();
        let bytes: Vec<&[u8]> = req.chunks(1).collect();
        let found: Vec<String> = models_of(&mut s, &bytes).into_iter().flatten().collect();
        assert_eq!(found, ["mistral:7b"]);
    }

    #[test]
    fn chunked_bodies_are_read_without_their_framing() {
        let head = b"POST /api/chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut s = RequestStream::new();
        let found = models_of(
            &mut s,
            &[
                head,
                b"a\r\n{\"model\":\"\r\n",
                b"5;ext=1\r\nphi3\"\r\n1\r\n}\r\n0\r\nX-Trailer: 1\r\n\r\n",
            ],
        );
        assert_eq!(found, [vec![], vec![], vec!["phi3".to_owned()]]);
        // The next request on the connection is read from its start.
        let found = models_of(&mut s, &[&post(r#"{"model":"next"}"#)]);
        assert_eq!(found, [vec!["next".to_owned()]]);
    }

    #[test]
    fn a_model_key_in_the_headers_is_not_the_model() {
        let mut s = RequestStream::new();
        let req =
            b"POST /x HTTP/1.1\r\nX-Note: {\"model\":\"decoy\"}\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(models_of(&mut s, &[req]), [Vec::<String>::new()]);
        assert!(!s.lost());
    }

    #[test]
    fn framing_that_cannot_be_followed_stops_the_reading() {
        for head in [
            &b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST /x HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        ] {
            let mut s = RequestStream::new();
            s.feed(head, &mut Vec::new());
            assert!(s.lost(), "{}", String::from_utf8_lossy(head));
        }
        let mut s = RequestStream::new();
        s.feed(&vec![b'a'; MAX_LINE + 1], &mut Vec::new());
        assert!(s.lost(), "an endless line is not followed");
    }
}
