//! Path-style globs: `*` (any run without `/`), `**` (any run), `?` (one character except `/`),
//! `[abc]`, `[a-z]`, `[!a-z]` (one character except `/`), `\x` (a literal `x`). The whole string
//! must match.
//!
//! A glob is compiled into a literal prefix, a literal suffix and the wildcard part between them.
//! Most globs reject an event on the prefix alone (a `starts_with`), and many have no wildcard part
//! worth simulating (`/etc/**` is a prefix test). The rest runs as a bit-parallel NFA over the
//! middle of the string: at most 128 states, one machine word pair, no allocation, linear time.

use std::fmt;

/// Wildcard tokens between the literal prefix and suffix; more need a `Vec` of states.
const MAX_TOKENS: usize = 127;

#[derive(Clone)]
pub struct Glob {
    source: Box<str>,
    prefix: Box<str>,
    suffix: Box<str>,
    middle: Middle,
}

#[derive(Clone)]
enum Middle {
    /// Nothing between prefix and suffix: the glob is a literal.
    Empty,
    /// `**`: anything.
    AnyRun,
    /// `*`: anything without `/`.
    SegmentRun,
    Nfa(Nfa),
}

#[derive(Clone)]
struct Nfa {
    tokens: Box<[Token]>,
    /// For each state, the states reachable from it through stars that match nothing.
    closure: Box<[u128]>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Literal(char),
    One,
    Class(Class),
    Star,
    DoubleStar,
}

#[derive(Clone, Debug, PartialEq)]
struct Class {
    negated: bool,
    ranges: Box<[(char, char)]>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        c != '/' && self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

/// What the kernel can do with a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobShape<'a> {
    /// No wildcard: one exact string.
    Exact(&'a str),
    /// `PREFIX**`: every string starting with the prefix.
    Prefix(&'a str),
    /// Anything else: must be expanded to the files it matches.
    Pattern,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GlobError(pub String);

impl Glob {
    pub fn new(source: &str) -> Result<Glob, GlobError> {
        if source.is_empty() {
            return Err(GlobError("empty glob".into()));
        }
        let tokens = tokenize(source)?;
        let first_wild = tokens
            .iter()
            .position(|t| !matches!(t, Token::Literal(_)))
            .unwrap_or(tokens.len());
        let last_wild = tokens
            .iter()
            .rposition(|t| !matches!(t, Token::Literal(_)))
            .map_or(first_wild, |i| i + 1);
        let literal = |ts: &[Token]| -> String {
            ts.iter()
                .filter_map(|t| match t {
                    Token::Literal(c) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        let prefix = literal(&tokens[..first_wild]);
        let suffix = literal(&tokens[last_wild..]);
        let middle_tokens = &tokens[first_wild..last_wild];
        let middle = match middle_tokens {
            [] => Middle::Empty,
            [Token::DoubleStar] => Middle::AnyRun,
            [Token::Star] => Middle::SegmentRun,
            ts if ts.len() > MAX_TOKENS => {
                return Err(GlobError(format!(
                    "glob has {} characters between its first and last wildcard; at most {MAX_TOKENS} are supported",
                    ts.len()
                )));
            }
            ts => Middle::Nfa(Nfa::new(ts)),
        };
        Ok(Glob {
            source: source.into(),
            prefix: prefix.into(),
            suffix: suffix.into(),
            middle,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal text every match starts and ends with.
    pub fn literal_affixes(&self) -> (&str, &str) {
        (&self.prefix, &self.suffix)
    }

    pub fn shape(&self) -> GlobShape<'_> {
        match (&self.middle, self.suffix.is_empty()) {
            (Middle::Empty, _) => GlobShape::Exact(&self.prefix),
            (Middle::AnyRun, true) => GlobShape::Prefix(&self.prefix),
            _ => GlobShape::Pattern,
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        if s.len() < self.prefix.len() + self.suffix.len()
            || !s.starts_with(&*self.prefix)
            || !s.ends_with(&*self.suffix)
        {
            return false;
        }
        // Both affixes matched as whole strs and do not overlap, so these are char boundaries.
        let middle = &s[self.prefix.len()..s.len() - self.suffix.len()];
        match &self.middle {
            Middle::Empty => middle.is_empty(),
            Middle::AnyRun => true,
            Middle::SegmentRun => !middle.contains('/'),
            Middle::Nfa(nfa) => nfa.matches(middle),
        }
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.source)
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Glob) -> bool {
        self.source == other.source
    }
}

fn tokenize(source: &str) -> Result<Vec<Token>, GlobError> {
    let mut tokens = Vec::new();
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            '*' => {
                if chars.peek() == Some(&'*') {
                    while chars.peek() == Some(&'*') {
                        chars.next();
                    }
                    Token::DoubleStar
                } else {
                    Token::Star
                }
            }
            '?' => Token::One,
            '\\' => match chars.next() {
                Some(escaped) => Token::Literal(escaped),
                None => {
                    return Err(GlobError(
                        "glob ends with `\\`; escape a backslash as `\\\\`".into(),
                    ));
                }
            },
            '[' => Token::Class(class(&mut chars)?),
            c => Token::Literal(c),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Class, GlobError> {
    let negated = chars.next_if(|&c| c == '!' || c == '^').is_some();
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let Some(c) = chars.next() else {
            return Err(GlobError("`[` without a closing `]`".into()));
        };
        // A `]` right after `[` or `[!` is a member, as in POSIX.
        if c == ']' && !first {
            break;
        }
        first = false;
        let lo = if c == '\\' {
            chars
                .next()
                .ok_or_else(|| GlobError("`[` without a closing `]`".into()))?
        } else {
            c
        };
        let hi = if chars.peek() == Some(&'-') {
            let mut ahead = chars.clone();
            ahead.next();
            match ahead.peek() {
                Some(']') | None => lo,
                Some(_) => {
                    chars.next();
                    let mut hi = chars.next().unwrap_or(lo);
                    if hi == '\\' {
                        hi = chars
                            .next()
                            .ok_or_else(|| GlobError("`[` without a closing `]`".into()))?;
                    }
                    hi
                }
            }
        } else {
            lo
        };
        if hi < lo {
            return Err(GlobError(format!("reversed range `{lo}-{hi}` in `[…]`")));
        }
        if lo == '/' || hi == '/' {
            return Err(GlobError(
                "`/` inside `[…]` never matches: classes match one character within a path component".into(),
            ));
        }
        ranges.push((lo, hi));
    }
    Ok(Class {
        negated,
        ranges: ranges.into(),
    })
}

impl Nfa {
    fn new(tokens: &[Token]) -> Nfa {
        let n = tokens.len();
        let mut closure = vec![0u128; n + 1];
        for i in (0..=n).rev() {
            closure[i] = 1 << i;
            if i < n && matches!(tokens[i], Token::Star | Token::DoubleStar) {
                closure[i] |= closure[i + 1];
            }
        }
        Nfa {
            tokens: tokens.into(),
            closure: closure.into(),
        }
    }

    fn matches(&self, s: &str) -> bool {
        let n = self.tokens.len();
        let mut states = self.closure[0];
        for c in s.chars() {
            let mut next = 0u128;
            let mut rest = states & !(1u128 << n);
            while rest != 0 {
                let i = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                match &self.tokens[i] {
                    Token::Literal(l) if *l == c => next |= self.closure[i + 1],
                    Token::One if c != '/' => next |= self.closure[i + 1],
                    Token::Class(class) if class.matches(c) => next |= self.closure[i + 1],
                    Token::Star if c != '/' => next |= self.closure[i],
                    Token::DoubleStar => next |= self.closure[i],
                    _ => {}
                }
            }
            if next == 0 {
                return false;
            }
            states = next;
        }
        states & (1u128 << n) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, s: &str) -> bool {
        Glob::new(glob).unwrap().matches(s)
    }

    #[test]
    fn stars() {
        assert!(m("/home/*/.ssh/id_*", "/home/dev/.ssh/id_ed25519"));
        assert!(m("/home/*/.ssh/id_*", "/home/dev/.ssh/id_ed25519.pub"));
        assert!(!m("/home/*/.ssh/id_*", "/home/a/b/.ssh/id_rsa"));
        assert!(!m("/home/*/.ssh/id_*", "/home/dev/.ssh/id_x/y"));
        assert!(m("/home/**/id_*", "/home/a/b/.ssh/id_rsa"));
        assert!(m("/home/**", "/home/"));
        assert!(m("/home/**", "/home/a/b"));
        assert!(!m("/home/**", "/home"));
        assert!(m("**", ""));
        assert!(m("*", "abc"));
        assert!(!m("*", "a/c"));
        assert!(m("*.gguf", "llama.gguf"));
        assert!(!m("/a/**/b", "/a/b"));
        assert!(m("/a/**/b", "/a//b"));
        assert!(m("/a/**b", "/a/b"));
        assert!(m("**/*.safetensors", "/srv/models/x.safetensors"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("a*a*a*a*b", &format!("{}b", "a".repeat(200))));
        assert!(!m("a*a*a*a*b", &"a".repeat(200)));
    }

    #[test]
    fn one_and_classes() {
        assert!(m("id_??a", "id_rsa"));
        assert!(!m("id_?", "id_/"));
        assert!(m("id_?", "id_é"));
        assert!(m("[abc]x", "bx"));
        assert!(m("[a-z]x", "qx"));
        assert!(!m("[!a-z]x", "qx"));
        assert!(m("[!a-z]x", "Qx"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(!m("[!a]", "/"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("-*r*", "-rf"));
        assert!(m("-*r*", "-fr"));
        assert!(!m("-*r*", "-xf"));
    }

    #[test]
    fn shapes() {
        assert_eq!(
            Glob::new("/etc/shadow").unwrap().shape(),
            GlobShape::Exact("/etc/shadow")
        );
        assert_eq!(
            Glob::new("/etc/**").unwrap().shape(),
            GlobShape::Prefix("/etc/")
        );
        assert_eq!(
            Glob::new("/etc/*.conf").unwrap().shape(),
            GlobShape::Pattern
        );
    }

    #[test]
    fn errors() {
        for bad in ["", "[abc", "a\\", "[z-a]", "[/]", "[!"] {
            assert!(Glob::new(bad).is_err(), "{bad} accepted");
        }
        assert!(Glob::new(&format!("*{}*", "x".repeat(200))).is_err());
        assert!(Glob::new(&format!("/{}*", "x".repeat(200))).is_ok());
    }
}
