//! The model of a plaintext HTTP request to a local model server, read as the request is sent.
//!
//! A client writes a request in pieces (headers, then the body, in as many writes as it likes);
//! [`ModelScanner`] is fed each piece in order and reports the top-level `"model"` of the JSON
//! body as soon as its value is complete, so the write that completes it can be judged before
//! it leaves. It is a small streaming tokenizer, not a search: a `"model"` inside a string
//! (escaped quotes) or nested in an object (a tool schema) is not the request's model. State is
//! a few bytes plus the value being read, bounded by [`MAX_MODEL`].

/// Longest model name kept; longer values are cut (and still judged).
pub const MAX_MODEL: usize = 256;
/// Header bytes looked at before giving up on finding the body (not HTTP, or a huge header).
const MAX_HEADER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading headers; `matched` counts the bytes of "\r\n\r\n" seen in a row.
    Headers { matched: u8 },
    /// In the JSON body.
    Body,
    /// Found, or gave up: nothing more to learn from this request.
    Done,
}

/// Where the tokenizer is inside the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// Between tokens.
    Between,
    /// Inside a string; `escaped` after a backslash.
    Str { escaped: bool },
    /// Inside a bare literal (number, true, false, null).
    Bare,
}

#[derive(Debug, Clone)]
pub struct ModelScanner {
    phase: Phase,
    header_bytes: usize,
    token: Token,
    /// Object/array nesting; the request's own keys are at depth 1.
    depth: u32,
    /// The current string is a key at depth 1 (what follows a `{` or `,` there).
    expecting_key: bool,
    /// Bytes of the current depth-1 key, when it may still be `model`.
    key: Vec<u8>,
    /// The last depth-1 key was `model` and its value has not started.
    model_key: bool,
    /// Reading the model's string value.
    reading_model: bool,
    value: Vec<u8>,
    found: Option<String>,
}

impl Default for ModelScanner {
    fn default() -> Self {
        ModelScanner::new()
    }
}

impl ModelScanner {
    pub fn new() -> ModelScanner {
        ModelScanner {
            phase: Phase::Headers { matched: 0 },
            header_bytes: 0,
            token: Token::Between,
            depth: 0,
            expecting_key: false,
            key: Vec::new(),
            model_key: false,
            reading_model: false,
            value: Vec::new(),
            found: None,
        }
    }

    /// Whether `bytes`, written after this request was scanned to the end, start a new request
    /// on the same connection (keep-alive): then scan them with a fresh scanner.
    pub fn starts_next_request(&self, bytes: &[u8]) -> bool {
        self.done()
            && [&b"POST "[..], b"PUT ", b"PATCH "]
                .iter()
                .any(|m| bytes.starts_with(m))
    }

    /// The model, once seen.
    pub fn model(&self) -> Option<&str> {
        self.found.as_deref()
    }

    /// True when more bytes cannot change the answer.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Feeds the next bytes of the request. Returns the model when these bytes completed it.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<&str> {
        let before = self.found.is_some();
        for &b in bytes {
            match self.phase {
                Phase::Done => break,
                Phase::Headers { matched } => self.header_byte(b, matched),
                Phase::Body => self.body_byte(b),
            }
        }
        if !before && self.found.is_some() {
            return self.found.as_deref();
        }
        None
    }

    fn header_byte(&mut self, b: u8, matched: u8) {
        self.header_bytes += 1;
        let next = match (matched, b) {
            (0 | 2, b'\r') => matched + 1,
            (1 | 3, b'\n') => matched + 1,
            (_, b'\r') => 1,
            _ => 0,
        };
        self.phase = if next == 4 {
            Phase::Body
        } else if self.header_bytes > MAX_HEADER {
            Phase::Done
        } else {
            Phase::Headers { matched: next }
        };
    }

    fn body_byte(&mut self, b: u8) {
        match self.token {
            Token::Str { escaped } => {
                if escaped {
                    self.token = Token::Str { escaped: false };
                    self.string_byte(b);
                } else if b == b'\\' {
                    self.token = Token::Str { escaped: true };
                    self.string_byte(b);
                } else if b == b'"' {
                    self.token = Token::Between;
                    self.end_string();
                } else {
                    self.string_byte(b);
                }
            }
            Token::Bare if is_bare(b) => {}
            Token::Bare | Token::Between => {
                self.token = Token::Between;
                self.structural(b);
            }
        }
    }

    fn structural(&mut self, b: u8) {
        match b {
            b'{' => {
                self.depth += 1;
                self.expecting_key = self.depth == 1;
                self.model_key = false;
            }
            b'[' => {
                self.depth += 1;
                self.model_key = false;
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    // The request object ended without a model.
                    self.phase = Phase::Done;
                }
            }
            b',' => self.expecting_key = self.depth == 1,
            b':' => {}
            b'"' => {
                self.token = Token::Str { escaped: false };
                self.key.clear();
                self.reading_model = self.model_key && self.depth == 1;
                self.value.clear();
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if self.depth == 0 => self.phase = Phase::Done, // not a JSON object body
            _ => {
                self.token = Token::Bare;
                self.model_key = false;
            }
        }
    }

    fn string_byte(&mut self, b: u8) {
        if self.reading_model {
            if self.value.len() < MAX_MODEL {
                self.value.push(b);
            }
        } else if self.expecting_key && self.key.len() <= 5 {
            self.key.push(b);
        }
    }

    fn end_string(&mut self) {
        if self.reading_model {
            self.reading_model = false;
            self.found = Some(String::from_utf8_lossy(&self.value).into_owned());
            self.phase = Phase::Done;
        } else if self.expecting_key {
            self.expecting_key = false;
            self.model_key = self.key == b"model";
        } else {
            self.model_key = false;
        }
    }
}

fn is_bare(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Option<String> {
        let mut s = ModelScanner::new();
        for p in pieces {
            s.feed(p);
        }
        s.model().map(str::to_owned)
    }

    const HEAD: &[u8] =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n";

    #[test]
    fn the_top_level_model_is_found_in_one_write_or_many() {
        let body = br#"{"messages":[{"role":"user","content":"say \"model\": \"evil\""}],"model":"llama3.2","stream":true}"#;
        let whole = [HEAD, body].concat();
        assert_eq!(scan(&[&whole]).as_deref(), Some("llama3.2"));
        // Byte by byte, the worst split a client can make.
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(scan(&bytes).as_deref(), Some("llama3.2"));
        assert_eq!(scan(&[HEAD, body]).as_deref(), Some("llama3.2"));
    }

    #[test]
    fn nested_and_quoted_models_are_not_the_request_model() {
        let body = br#"{"tools":[{"type":"function","function":{"parameters":{"model":{"type":"string"}}}}],
            "metadata":{"model":"decoy"},"n":1,"ok":true,"model" : "qwen2.5-coder:7b"}"#;
        assert_eq!(scan(&[HEAD, body]).as_deref(), Some("qwen2.5-coder:7b"));
        let none = br#"{"messages":[{"content":"\"model\":\"x\""}],"stream":false}"#;
        assert_eq!(scan(&[HEAD, none]), None);
    }

    #[test]
    fn the_write_that_completes_the_model_reports_it_once() {
        let mut s = ModelScanner::new();
        assert_eq!(s.feed(HEAD), None);
        assert_eq!(s.feed(br#"{"model":"lla"#), None);
        assert_eq!(s.feed(br#"ma3","messages":[]}"#), Some("llama3"));
        assert!(s.done());
        assert_eq!(s.feed(b"more"), None);
        assert!(s.starts_next_request(b"POST /api/chat HTTP/1.1\r\n"));
        assert!(!s.starts_next_request(b"more"));
    }

    #[test]
    fn other_bodies_end_the_scan() {
        let mut s = ModelScanner::new();
        s.feed(b"GET / HTTP/1.1\r\n\r\n[1,2]");
        assert!(s.done());
        assert_eq!(s.model(), None);
        let mut s = ModelScanner::new();
        s.feed(&vec![b'x'; MAX_HEADER + 1]);
        assert!(s.done(), "no end of headers: not followed forever");
    }
}
