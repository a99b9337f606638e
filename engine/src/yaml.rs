//! YAML text to a small tree whose nodes can be located in the source afterwards.
//!
//! serde_norway attaches a position only to the error that stops a deserialization. The rule
//! compiler wants to report *every* problem of a file, including ones found only later (duplicate
//! ids across files, undefined lists). So the text is read once into a [`Node`] tree whose nodes
//! carry their pre-order number; when a node needs a position, [`locate`] deserializes the text
//! again and fails on purpose at that node, which makes serde_norway tell where it is. Errors are
//! rare, so that second pass costs nothing on the good path.
//!
//! The tree builder also enforces the input limits: size, nesting depth (serde_norway stops at
//! 128 levels), and the total number of nodes and scalar bytes after alias expansion, which is
//! what stops "billion laughs" documents.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Largest rule or fixture file read, in bytes.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Most nodes one document may expand to (aliases included). Without aliases a document has
/// fewer nodes than bytes; the budget allows some reuse of anchors beyond that, and stops alias
/// bombs after work proportional to the size of the file.
const MAX_NODES: u32 = 250_000;
/// Most scalar bytes one document may expand to (aliases included), likewise.
const MAX_SCALAR_BYTES: usize = 8 << 20;

fn node_budget(text_len: usize) -> u32 {
    u32::try_from(text_len.saturating_mul(4).saturating_add(1024))
        .map_or(MAX_NODES, |n| n.min(MAX_NODES))
}

fn byte_budget(text_len: usize) -> usize {
    text_len
        .saturating_mul(4)
        .saturating_add(64 << 10)
        .min(MAX_SCALAR_BYTES)
}

/// One YAML value and its pre-order number in its document.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: u32,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// What the value is, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a decimal number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Why a document could not be read as a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Reads bytes as one YAML document, within the limits above.
pub fn parse(bytes: &[u8]) -> Result<(String, Node), SyntaxError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(SyntaxError {
            position: None,
            message: format!(
                "file is {} bytes; rule and fixture files are limited to {} bytes (1 MiB)",
                bytes.len(),
                MAX_FILE_BYTES
            ),
            hint: "split the rules over several files, or move long value lists into `lists`"
                .into(),
        });
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let at = err.valid_up_to();
            return Err(SyntaxError {
                position: Some(line_column(bytes, at)),
                message: format!("invalid UTF-8 (byte 0x{:02x})", bytes[at]),
                hint: "save the file as UTF-8".into(),
            });
        }
    };
    if let Some(at) = text.find('\0') {
        return Err(SyntaxError {
            position: Some(line_column(bytes, at)),
            message: "NUL byte in file".into(),
            hint: "rule files are text; remove the NUL byte".into(),
        });
    }
    let node = parse_str(text)?;
    Ok((text.to_owned(), node))
}

fn parse_str(text: &str) -> Result<Node, SyntaxError> {
    let mut documents = serde_norway::Deserializer::from_str(text);
    let Some(first) = documents.next() else {
        return Ok(Node {
            id: 0,
            value: Value::Null,
        });
    };
    let mut budget = Budget {
        max_nodes: node_budget(text.len()),
        max_bytes: byte_budget(text.len()),
        ..Budget::default()
    };
    let node = NodeSeed {
        budget: &mut budget,
    }
    .deserialize(first)
    .map_err(|err| {
        let mut error = syntax_error(&err, &budget);
        if error.position.is_none() {
            // serde_norway's repetition limit has no position; name the last value read before
            // it struck: a value inside the repeated content.
            error.position = (1..=3)
                .filter_map(|back| budget.nodes.checked_sub(back))
                .find_map(|node| locate(text, node));
        }
        error
    })?;
    if let Some(second) = documents.next() {
        // Either the second document's start or its syntax error, whichever comes first.
        let position = match (LocateSeed {
            target: 0,
            counter: &mut 0,
        })
        .deserialize(second)
        {
            Ok(()) => None,
            Err(err) => err.location().map(|l| (l.line(), l.column())),
        };
        return Err(SyntaxError {
            position,
            message: "more than one YAML document in the file".into(),
            hint: "a rule file is one document; remove the `---` separator or split the file"
                .into(),
        });
    }
    Ok(node)
}

/// Line and column (1-based, in characters) of a byte offset.
pub fn line_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

const BUDGET_NODES: &str = "too many values";
const BUDGET_BYTES: &str = "too much text";
const TAGS: &str = "YAML tags";

fn syntax_error(err: &serde_norway::Error, budget: &Budget) -> SyntaxError {
    let position = err.location().map(|l| (l.line(), l.column()));
    let text = err.to_string();
    let (message, hint) = if budget.exceeded == Some(BUDGET_NODES) {
        (
            format!(
                "the document expands to more than {} values",
                budget.max_nodes
            ),
            "this is what an alias bomb looks like; write the values out, or use `lists`".into(),
        )
    } else if budget.exceeded == Some(BUDGET_BYTES) {
        (
            format!(
                "the document expands to more than {} bytes of text",
                budget.max_bytes
            ),
            "aliases (*name) repeat large anchors; write the values out, or use `lists`".into(),
        )
    } else if budget.exceeded == Some(TAGS) {
        (
            "YAML tags (`!name`) are not supported".to_owned(),
            "remove the tag; quote the value if it should be a string starting with `!`".into(),
        )
    } else if text.starts_with("recursion limit exceeded") {
        (
            "nesting is too deep (more than 128 levels)".to_owned(),
            "flatten the structure; rule predicates rarely need more than a few levels".into(),
        )
    } else if text.starts_with("repetition limit exceeded") {
        (
            "aliases (*name) repeat too much; the expansion stopped here".to_owned(),
            "this is what an alias bomb looks like; write the values out, or use `lists`".into(),
        )
    } else if text.starts_with("unknown anchor") {
        (
            "alias refers to an unknown anchor".to_owned(),
            "define the anchor (&name) before using it (*name)".into(),
        )
    } else {
        (
            format!("YAML syntax: {}", strip_first_location(&text)),
            "check indentation (spaces, not tabs) and quoting; strings containing `: ` or \
             starting with `*`, `&`, `!`, `[`, `{` must be quoted"
                .into(),
        )
    };
    SyntaxError {
        position,
        message,
        hint,
    }
}

/// serde_norway writes " at line L column C" into its messages; the caller reports that position
/// in front, so the first copy is noise.
fn strip_first_location(text: &str) -> String {
    let Some(start) = text.find(" at line ") else {
        return text.to_owned();
    };
    let rest = &text[start + " at line ".len()..];
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let n = digits(rest);
    let Some(after) = rest[n..].strip_prefix(" column ") else {
        return text.to_owned();
    };
    let m = digits(after);
    format!("{}{}", &text[..start], &after[m..])
}

#[derive(Default)]
struct Budget {
    nodes: u32,
    bytes: usize,
    max_nodes: u32,
    max_bytes: usize,
    exceeded: Option<&'static str>,
}

impl Budget {
    fn next_id(&mut self) -> Result<u32, &'static str> {
        if self.nodes >= self.max_nodes {
            self.exceeded = Some(BUDGET_NODES);
            return Err(BUDGET_NODES);
        }
        let id = self.nodes;
        self.nodes += 1;
        Ok(id)
    }

    fn take_bytes(&mut self, n: usize) -> Result<(), &'static str> {
        self.bytes += n;
        if self.bytes > self.max_bytes {
            self.exceeded = Some(BUDGET_BYTES);
            return Err(BUDGET_BYTES);
        }
        Ok(())
    }
}

struct NodeSeed<'b> {
    budget: &'b mut Budget,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Node;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        let id = self.budget.next_id().map_err(de::Error::custom)?;
        let value = d.deserialize_any(NodeVisitor {
            budget: self.budget,
        })?;
        Ok(Node { id, value })
    }
}

struct NodeVisitor<'b> {
    budget: &'b mut Budget,
}

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        // Out of range for any rule value; keep it distinguishable from valid numbers.
        Ok(i128::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget.take_bytes(v.len()).map_err(E::custom)?;
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not supported"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed {
            budget: self.budget,
        })? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(NodeSeed {
            budget: self.budget,
        })? {
            let value = map.next_value_seed(NodeSeed {
                budget: self.budget,
            })?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        self.budget.exceeded = Some(TAGS);
        Err(de::Error::custom(TAGS))
    }
}

/// Marker of the deliberate failures the locating walks provoke.
const LOCATE_MARKER: &str = "\u{1}oknek-locate\u{1}";

/// The 1-based line and column of the node numbered `target` in `text`.
///
/// `text` must be the text the node was read from; then the walk below visits nodes in the same
/// order as [`parse`] and fails exactly at the target, where serde_norway records the position.
pub fn locate(text: &str, target: u32) -> Option<(usize, usize)> {
    let document = serde_norway::Deserializer::from_str(text).next()?;
    let mut counter = 0;
    match (LocateSeed {
        target,
        counter: &mut counter,
    })
    .deserialize(document)
    {
        Ok(()) => None,
        Err(err) if err.to_string().contains(LOCATE_MARKER) => {
            err.location().map(|l| (l.line(), l.column()))
        }
        Err(_) => None,
    }
}

/// Positions of many nodes of `root` (read from `text`), in one pass over the text plus one per
/// empty collection among them.
///
/// A walk that fails at a scalar can carry on: serde_norway has consumed the scalar, and the error
/// it hands back up already names the scalar's position in its message. A collection cannot be
/// failed without derailing the walk, so a non-empty collection is located by its first scalar
/// (the same position for a block mapping; just inside the bracket for a flow collection).
pub fn locate_all(text: &str, root: &Node, targets: &[u32]) -> HashMap<u32, (usize, usize)> {
    let mut proxies: HashMap<u32, u32> = HashMap::new();
    let mut empty = Vec::new();
    let mut wanted: HashSet<u32> = targets.iter().copied().collect();
    proxy_scalars(root, &mut wanted, &mut proxies, &mut empty);
    let scalar_targets: HashSet<u32> = proxies.values().copied().collect();
    let mut found = HashMap::new();
    if !scalar_targets.is_empty()
        && let Some(document) = serde_norway::Deserializer::from_str(text).next()
    {
        let mut walk = MultiWalk {
            targets: &scalar_targets,
            counter: 0,
            found: &mut found,
        };
        if let Err(err) = (MultiSeed { walk: &mut walk }).deserialize(document) {
            // Only a scalar document fails at the top.
            if let Some(position) = marker_position(&err.to_string()) {
                found.insert(0, position);
            }
        }
    }
    let mut out: HashMap<u32, (usize, usize)> = proxies
        .into_iter()
        .filter_map(|(target, scalar)| found.get(&scalar).map(|p| (target, *p)))
        .collect();
    for target in empty {
        if let Some(position) = locate(text, target) {
            out.insert(target, position);
        }
    }
    out
}

/// Maps each wanted node to the first scalar at or below it; empty collections go to `empty`.
fn proxy_scalars(
    node: &Node,
    wanted: &mut HashSet<u32>,
    proxies: &mut HashMap<u32, u32>,
    empty: &mut Vec<u32>,
) {
    if wanted.is_empty() {
        return;
    }
    let first_scalar = |node: &Node| -> Option<u32> {
        let mut n = node;
        loop {
            match &n.value {
                Value::Seq(items) => n = items.first()?,
                Value::Map(entries) => n = &entries.first()?.0,
                _ => return Some(n.id),
            }
        }
    };
    if wanted.remove(&node.id) {
        match first_scalar(node) {
            Some(scalar) => {
                proxies.insert(node.id, scalar);
            }
            None => empty.push(node.id),
        }
    }
    match &node.value {
        Value::Seq(items) => {
            for item in items {
                proxy_scalars(item, wanted, proxies, empty);
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                proxy_scalars(k, wanted, proxies, empty);
                proxy_scalars(v, wanted, proxies, empty);
            }
        }
        _ => {}
    }
}

/// The position in a located marker error's message: `…MARKER at line L column C`. serde_norway
/// leaves the position out at line 1 column 1.
fn marker_position(message: &str) -> Option<(usize, usize)> {
    let at = message.find(LOCATE_MARKER)? + LOCATE_MARKER.len();
    let rest = &message[at..];
    let Some(rest) = rest.strip_prefix(" at line ") else {
        return Some((1, 1));
    };
    let (line, rest) = rest.split_once(" column ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.parse().ok()?, column.parse().ok()?))
}

struct MultiWalk<'t> {
    targets: &'t HashSet<u32>,
    counter: u32,
    found: &'t mut HashMap<u32, (usize, usize)>,
}

impl MultiWalk<'_> {
    /// Records a provoked failure and swallows it; passes real errors on.
    fn absorb<E: de::Error>(&mut self, id: u32, result: Result<(), E>) -> Result<(), E> {
        match result {
            Err(err) => match marker_position(&err.to_string()) {
                Some(position) => {
                    self.found.insert(id, position);
                    Ok(())
                }
                None => Err(err),
            },
            Ok(()) => Ok(()),
        }
    }
}

struct MultiSeed<'w, 't> {
    walk: &'w mut MultiWalk<'t>,
}

impl<'de> DeserializeSeed<'de> for MultiSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let id = self.walk.counter;
        self.walk.counter += 1;
        if self.walk.targets.contains(&id) {
            return d.deserialize_any(FailVisitor);
        }
        d.deserialize_any(MultiVisitor { walk: self.walk })
    }
}

struct MultiVisitor<'w, 't> {
    walk: &'w mut MultiWalk<'t>,
}

impl<'de> Visitor<'de> for MultiVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let id = self.walk.counter;
            match seq.next_element_seed(MultiSeed { walk: self.walk }) {
                Ok(Some(())) => {}
                Ok(None) => return Ok(()),
                Err(err) => self.walk.absorb(id, Err(err))?,
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        loop {
            let id = self.walk.counter;
            match map.next_key_seed(MultiSeed { walk: self.walk }) {
                Ok(Some(())) => {}
                Ok(None) => return Ok(()),
                Err(err) => self.walk.absorb(id, Err(err))?,
            }
            let id = self.walk.counter;
            let result = map.next_value_seed(MultiSeed { walk: self.walk });
            self.walk.absorb(id, result)?;
        }
    }
}

struct LocateSeed<'c> {
    target: u32,
    counter: &'c mut u32,
}

impl<'de> DeserializeSeed<'de> for LocateSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let id = *self.counter;
        *self.counter += 1;
        if id == self.target {
            return d.deserialize_any(FailVisitor);
        }
        d.deserialize_any(WalkVisitor {
            target: self.target,
            counter: self.counter,
        })
    }
}

struct FailVisitor;

impl<'de> Visitor<'de> for FailVisitor {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(LOCATE_MARKER))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(LOCATE_MARKER))
    }
}

struct WalkVisitor<'c> {
    target: u32,
    counter: &'c mut u32,
}

impl<'de> Visitor<'de> for WalkVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(LocateSeed {
                target: self.target,
                counter: self.counter,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map
            .next_key_seed(LocateSeed {
                target: self.target,
                counter: self.counter,
            })?
            .is_some()
        {
            map.next_value_seed(LocateSeed {
                target: self.target,
                counter: self.counter,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(node: &Node, out: &mut Vec<u32>) {
        out.push(node.id);
        match &node.value {
            Value::Seq(items) => items.iter().for_each(|n| ids(n, out)),
            Value::Map(entries) => entries.iter().for_each(|(k, v)| {
                ids(k, out);
                ids(v, out)
            }),
            _ => {}
        }
    }

    #[test]
    fn numbers_nodes_in_pre_order_and_locates_them() {
        let text = "a: 1\nb:\n  - x\n  - { c: true }\n";
        let (_, node) = parse(text.as_bytes()).unwrap();
        let mut order = Vec::new();
        ids(&node, &mut order);
        assert_eq!(order, (0..order.len() as u32).collect::<Vec<_>>());
        // 0 root, 1 a, 2 1, 3 b, 4 seq, 5 x, 6 map, 7 c, 8 true
        assert_eq!(locate(text, 1), Some((1, 1)));
        assert_eq!(locate(text, 2), Some((1, 4)));
        assert_eq!(locate(text, 5), Some((3, 5)));
        assert_eq!(locate(text, 7), Some((4, 7)));
        assert_eq!(locate(text, 8), Some((4, 10)));
        assert_eq!(locate(text, 99), None);
    }

    #[test]
    fn locates_many_nodes_in_one_pass() {
        let text = "a: 1\nb:\n  - x\n  - { c: true }\n  - []\n";
        let (_, node) = parse(text.as_bytes()).unwrap();
        // 0 root, 1 a, 2 1, 3 b, 4 seq, 5 x, 6 map, 7 c, 8 true, 9 []
        let found = locate_all(text, &node, &[0, 2, 4, 5, 6, 8, 9]);
        for id in [0, 2, 4, 5, 6, 8, 9] {
            let expected = match id {
                0 => locate(text, 1),
                4 => locate(text, 5),
                6 => locate(text, 7),
                _ => locate(text, id),
            };
            assert_eq!(found.get(&id).copied(), expected, "node {id}");
        }
        assert_eq!(found[&9], (5, 5));
        let (_, scalar) = parse(b"just text").unwrap();
        assert_eq!(locate_all("just text", &scalar, &[0])[&0], (1, 1));
    }

    #[test]
    fn scalars_keep_yaml_types() {
        let (_, node) = parse(b"[08:00, '1', 1, true, ~, 1.5, +01:00, mon-fri]").unwrap();
        let Value::Seq(items) = node.value else {
            panic!("not a list")
        };
        let kinds: Vec<_> = items.iter().map(Node::type_name).collect();
        assert_eq!(
            kinds,
            [
                "a string",
                "a string",
                "a number",
                "a boolean",
                "nothing (null)",
                "a decimal number",
                "a string",
                "a string"
            ]
        );
    }

    #[test]
    fn limits() {
        let err = parse(&vec![b' '; MAX_FILE_BYTES + 1]).unwrap_err();
        assert!(err.message.contains("limited"), "{err}");
        let err = parse(b"a: 1\nb: \xff\n").unwrap_err();
        assert_eq!(err.position, Some((2, 4)));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let err = parse(deep.as_bytes()).unwrap_err();
        assert!(err.message.contains("nesting"), "{err}");
        let err = parse(b"a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.position, Some((3, 1)), "{err:?}");
        let err = parse(b"a: !foo 1\n").unwrap_err();
        assert!(err.message.contains("tags"), "{err}");
    }

    #[test]
    fn alias_bombs_stop_fast() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let start = std::time::Instant::now();
        let err = parse(text.as_bytes()).unwrap_err();
        assert!(start.elapsed().as_secs() < 1);
        assert!(
            err.message.contains("expands") || err.message.contains("repeat"),
            "{err}"
        );

        let big = "x".repeat(100_000);
        let mut text = format!("a: &a \"{big}\"\nb: [");
        text.push_str(&vec!["*a"; 200].join(", "));
        text.push_str("]\n");
        let err = parse(text.as_bytes()).unwrap_err();
        assert!(err.message.contains("bytes of text"), "{err}");
    }

    #[test]
    fn strips_the_first_location() {
        assert_eq!(
            strip_first_location("did not find key at line 3 column 5, while at line 1 column 1"),
            "did not find key, while at line 1 column 1"
        );
    }
}
