//! Per-kind rule index: which rules can possibly fire on an event, found by a few hash lookups.
//!
//! For every rule the compiler picks one *necessary* condition from its match — a test that must
//! hold whenever the rule fires: an exact value, a basename, a path prefix or suffix (a glob's
//! literal prefix or suffix counts), an argv element, a number. The index maps those values to
//! rules. An event looks up its own field values, ORs the hits into a bitset over the kind's rules
//! (plus the rules that have no such condition), and only those candidates are evaluated, in set
//! order. The index may admit rules that do not fire, never miss one that would.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use oknek_event::{Event, Field, FieldValue};

use crate::glob::GlobShape;
use crate::predicate::{ArgvCheck, Pred, StrCheck};

/// Bytes of a prefix (or suffix) used as its key; longer ones are cut to this.
const AFFIX_KEY: usize = 16;
/// Rules per kind whose candidate bitset lives on the stack.
const STACK_WORDS: usize = 64;

/// FxHash (rustc's hasher): the keys come from the rules, so there is nothing to defend against,
/// and lookups of short strings are several times faster than with SipHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;
type FxMap<K, V> = HashMap<K, V, FxBuild>;

/// A necessary condition of a rule, as index keys.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Exact(Field, Vec<u8>),
    Basename(Field, Vec<u8>),
    Prefix(Field, Vec<u8>),
    Suffix(Field, Vec<u8>),
    ArgvElement(Vec<u8>),
    Number(Field, u64),
    Range(Field, u64, u64),
}

#[derive(Debug, Clone, Default)]
struct StringIndex {
    exact: FxMap<Box<[u8]>, Vec<u32>>,
    basename: FxMap<Box<[u8]>, Vec<u32>>,
    /// Prefix keys; walked along the value's first bytes.
    prefix: Trie,
    /// Suffix keys, reversed; walked along the value's last bytes, backwards.
    suffix: Trie,
}

/// A byte trie of at most [`AFFIX_KEY`] levels: one walk finds every key that starts a value,
/// however many different key lengths there are.
#[derive(Debug, Clone)]
struct Trie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    /// Children by byte, sorted.
    children: Vec<(u8, u32)>,
    /// Rules whose key ends here.
    rules: Vec<u32>,
}

impl Default for Trie {
    fn default() -> Trie {
        Trie {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl Trie {
    fn is_empty(&self) -> bool {
        self.nodes.len() == 1 && self.nodes[0].rules.is_empty()
    }

    fn insert(&mut self, key: impl Iterator<Item = u8>, local: u32) {
        let mut at = 0usize;
        for byte in key {
            at = match self.nodes[at].children.binary_search_by_key(&byte, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.insert(i, (byte, next as u32));
                    next
                }
            };
        }
        let rules = &mut self.nodes[at].rules;
        if rules.last() != Some(&local) {
            rules.push(local);
        }
    }

    /// Marks the rules of every key that is a prefix of `bytes`.
    #[inline]
    fn walk(&self, bytes: impl Iterator<Item = u8>, bits: &mut [u64]) {
        let mut node = &self.nodes[0];
        for &local in &node.rules {
            set_bit(bits, local);
        }
        for byte in bytes {
            let Ok(i) = node.children.binary_search_by_key(&byte, |c| c.0) else {
                return;
            };
            node = &self.nodes[node.children[i].1 as usize];
            for &local in &node.rules {
                set_bit(bits, local);
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct NumberIndex {
    exact: FxMap<u64, Vec<u32>>,
    ranges: Vec<(u64, u64, u32)>,
}

/// The rules of one kind and the index over them.
#[derive(Debug, Clone, Default)]
pub(crate) struct KindIndex {
    /// Set-wide rule numbers in set order; bit i of a candidate set stands for `rules[i]`.
    pub rules: Vec<u32>,
    /// Rules without an indexable condition: always candidates.
    always: Vec<u64>,
    strings: Vec<(Field, StringIndex)>,
    numbers: Vec<(Field, NumberIndex)>,
    argv: FxMap<Box<[u8]>, Vec<u32>>,
}

impl KindIndex {
    /// Builds the index of rules `(set-wide number, match)` in set order.
    pub fn build<'p>(rules: impl Iterator<Item = (u32, Option<&'p Pred>)>) -> KindIndex {
        let mut index = KindIndex::default();
        let mut always = Vec::new();
        for (local, (global, pred)) in rules.enumerate() {
            let local = local as u32;
            index.rules.push(global);
            match pred.and_then(keys) {
                Some((_, keys)) => {
                    for key in keys {
                        index.insert(key, local);
                    }
                }
                None => always.push(local),
            }
        }
        index.always = vec![0; index.rules.len().div_ceil(64)];
        for local in always {
            set_bit(&mut index.always, local);
        }
        index
    }

    fn strings(&mut self, field: Field) -> &mut StringIndex {
        let at = match self.strings.iter().position(|(f, _)| *f == field) {
            Some(at) => at,
            None => {
                self.strings.push((field, StringIndex::default()));
                self.strings.len() - 1
            }
        };
        &mut self.strings[at].1
    }

    fn numbers(&mut self, field: Field) -> &mut NumberIndex {
        let at = match self.numbers.iter().position(|(f, _)| *f == field) {
            Some(at) => at,
            None => {
                self.numbers.push((field, NumberIndex::default()));
                self.numbers.len() - 1
            }
        };
        &mut self.numbers[at].1
    }

    fn insert(&mut self, key: Key, local: u32) {
        let push = |map: &mut FxMap<Box<[u8]>, Vec<u32>>, k: Vec<u8>| {
            let list = map.entry(k.into_boxed_slice()).or_default();
            if list.last() != Some(&local) {
                list.push(local);
            }
        };
        match key {
            Key::Exact(f, v) => push(&mut self.strings(f).exact, v),
            Key::Basename(f, v) => push(&mut self.strings(f).basename, v),
            Key::Prefix(f, v) => self.strings(f).prefix.insert(v.into_iter(), local),
            Key::Suffix(f, v) => self.strings(f).suffix.insert(v.into_iter().rev(), local),
            Key::ArgvElement(v) => push(&mut self.argv, v),
            Key::Number(f, n) => {
                let list = self.numbers(f).exact.entry(n).or_default();
                if list.last() != Some(&local) {
                    list.push(local);
                }
            }
            Key::Range(f, lo, hi) => self.numbers(f).ranges.push((lo, hi, local)),
        }
    }

    /// Calls `judge` with the set-wide number of every candidate rule for `event`, in set order.
    #[inline]
    pub fn for_each_candidate(&self, event: &Event, mut judge: impl FnMut(u32)) {
        let words = self.always.len();
        let mut stack = [0u64; STACK_WORDS];
        let mut heap = Vec::new();
        let bits: &mut [u64] = if words <= STACK_WORDS {
            &mut stack[..words]
        } else {
            heap.resize(words, 0);
            &mut heap
        };
        bits.copy_from_slice(&self.always);
        self.mark(event, bits);
        for (w, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                judge(self.rules[w * 64 + bit]);
            }
        }
    }

    fn mark(&self, event: &Event, bits: &mut [u64]) {
        let hit = |bits: &mut [u64], list: Option<&Vec<u32>>| {
            for &local in list.into_iter().flatten() {
                set_bit(bits, local);
            }
        };
        for (field, index) in &self.strings {
            let Some(FieldValue::Str(value)) = event.field(*field) else {
                continue;
            };
            let b = value.as_bytes();
            if !index.exact.is_empty() {
                hit(bits, index.exact.get(b));
            }
            if !index.basename.is_empty() {
                let base = b.rsplit(|&c| c == b'/').next().unwrap_or(b);
                hit(bits, index.basename.get(base));
            }
            if !index.prefix.is_empty() {
                index.prefix.walk(b.iter().copied().take(AFFIX_KEY), bits);
            }
            if !index.suffix.is_empty() {
                index
                    .suffix
                    .walk(b.iter().rev().copied().take(AFFIX_KEY), bits);
            }
        }
        if !self.argv.is_empty()
            && let Some(FieldValue::List(items)) = event.field(Field::Argv)
        {
            for item in items {
                hit(bits, self.argv.get(item.as_bytes()));
            }
        }
        for (field, index) in &self.numbers {
            let Some(FieldValue::Uint(n)) = event.field(*field) else {
                continue;
            };
            hit(bits, index.exact.get(&n));
            for &(lo, hi, local) in &index.ranges {
                if lo <= n && n <= hi {
                    set_bit(bits, local);
                }
            }
        }
    }

    /// How many rules are always candidates.
    #[cfg(test)]
    pub fn unindexed(&self) -> usize {
        self.always.iter().map(|w| w.count_ones() as usize).sum()
    }
}

#[inline]
fn set_bit(bits: &mut [u64], local: u32) {
    bits[local as usize / 64] |= 1 << (local % 64);
}

/// The best necessary condition of `pred` as index keys, with a selectivity score (higher is
/// more selective); `None` when there is none.
fn keys(pred: &Pred) -> Option<(u32, Vec<Key>)> {
    match pred {
        Pred::All(preds) => preds
            .iter()
            .filter_map(keys)
            .max_by_key(|(score, _)| *score),
        Pred::Any(preds) => {
            // Every branch must contribute, or a rule firing through the others would be missed.
            let mut all = Vec::new();
            let mut score = u32::MAX;
            for p in preds.iter() {
                let (s, k) = keys(p)?;
                score = score.min(s);
                all.extend(k);
            }
            Some((score, all))
        }
        Pred::Str { field, check } => string_keys(*field, check),
        Pred::Argv(ArgvCheck::Contains(set)) => Some((
            60,
            set.values()
                .into_iter()
                .map(|v| Key::ArgvElement(v.as_bytes().to_vec()))
                .collect(),
        )),
        Pred::Argv(ArgvCheck::ContainsAll(values)) => {
            // Any one of the values must be an element: index the longest, the rarest guess.
            let v = values.iter().max_by_key(|v| v.len())?;
            Some((60, vec![Key::ArgvElement(v.as_bytes().to_vec())]))
        }
        Pred::Argv(ArgvCheck::Element(checks)) => checks.iter().find_map(|c| match c {
            StrCheck::Exact(set) => Some((
                60,
                set.values()
                    .into_iter()
                    .map(|v| Key::ArgvElement(v.as_bytes().to_vec()))
                    .collect(),
            )),
            _ => None,
        }),
        Pred::Num { field, ranges } if ranges.len() <= 64 => {
            let singletons = ranges.iter().all(|(lo, hi)| lo == hi);
            let keys = ranges
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        Key::Number(*field, lo)
                    } else {
                        Key::Range(*field, lo, hi)
                    }
                })
                .collect();
            Some((if singletons { 40 } else { 20 }, keys))
        }
        _ => None,
    }
}

fn string_keys(field: Field, check: &StrCheck) -> Option<(u32, Vec<Key>)> {
    let head = |v: &[u8]| v[..v.len().min(AFFIX_KEY)].to_vec();
    let tail = |v: &[u8]| v[v.len().saturating_sub(AFFIX_KEY)..].to_vec();
    let affix_score = |len: usize| 20 + 4 * len.min(AFFIX_KEY) as u32;
    match check {
        StrCheck::Exact(set) => Some((
            100,
            set.values()
                .into_iter()
                .map(|v| Key::Exact(field, v.as_bytes().to_vec()))
                .collect(),
        )),
        StrCheck::Basename(set) => Some((
            90,
            set.values()
                .into_iter()
                .map(|v| Key::Basename(field, v.as_bytes().to_vec()))
                .collect(),
        )),
        StrCheck::Prefix(values) => {
            let shortest = values.iter().map(|v| v.len()).min()?;
            if shortest == 0 {
                return None;
            }
            Some((
                affix_score(shortest),
                values
                    .iter()
                    .map(|v| Key::Prefix(field, head(v.as_bytes())))
                    .collect(),
            ))
        }
        StrCheck::Suffix(values) => {
            let shortest = values.iter().map(|v| v.len()).min()?;
            if shortest == 0 {
                return None;
            }
            Some((
                affix_score(shortest),
                values
                    .iter()
                    .map(|v| Key::Suffix(field, tail(v.as_bytes())))
                    .collect(),
            ))
        }
        StrCheck::Glob(globs) => {
            let mut keys = Vec::with_capacity(globs.len());
            let mut score = 100;
            for glob in globs.iter() {
                match glob.shape() {
                    GlobShape::Exact(v) => keys.push(Key::Exact(field, v.as_bytes().to_vec())),
                    _ => {
                        let (prefix, suffix) = glob.literal_affixes();
                        if prefix.is_empty() && suffix.is_empty() {
                            return None;
                        }
                        if prefix.len().min(AFFIX_KEY) >= suffix.len().min(AFFIX_KEY) {
                            score = score.min(affix_score(prefix.len()));
                            keys.push(Key::Prefix(field, head(prefix.as_bytes())));
                        } else {
                            score = score.min(affix_score(suffix.len()));
                            keys.push(Key::Suffix(field, tail(suffix.as_bytes())));
                        }
                    }
                }
            }
            Some((score, keys))
        }
        StrCheck::Contains(_) | StrCheck::Regex(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use oknek_event::{Event, MemoryBaseline};
    use proptest::prelude::*;

    use crate::{EvalContext, QuotaLedger, RuleSet};

    /// Rules whose conditions hit every kind of index key, and some that cannot be indexed.
    const RULES: &str = r#"
oknek_rules: 1
lists:
  shells: [bash, sh]
rules:
  - { id: exact, title: t, kind: open, match: { path: [/etc/shadow, /a/b] }, action: block }
  - { id: prefix, title: t, kind: [open, watch], match: { path: { prefix: [/home/dev/.ssh/, /a] } }, action: warn }
  - { id: suffix, title: t, kind: open, match: { path: { suffix: .pem } }, action: warn }
  - { id: glob-p, title: t, kind: open, match: { path: { glob: "/home/*/.aws/*" } }, action: block }
  - { id: glob-s, title: t, kind: open, match: { path: { glob: "**/x.gguf" } }, action: warn }
  - { id: glob-x, title: t, kind: open, match: { path: { glob: "*" } }, action: allow }
  - { id: base, title: t, kind: exec, match: { path: { basename: [nc, rm] }, uid: 0 }, action: block }
  - { id: argv, title: t, kind: exec, match: { argv: { contains: [-rf, /] } }, action: warn }
  - { id: argv-all, title: t, kind: exec, match: { argv: { contains_all: [push, --force] } }, action: warn }
  - { id: argv-el, title: t, kind: exec, match: { argv: { element: { exact: x, prefix: x } } }, action: warn }
  - { id: comm, title: t, kind: exec, match: { comm: $shells, argv: { regex: "a.*b" } }, action: block }
  - { id: any, title: t, kind: [exec, open], match: { any: [ { path: /a }, { exe: { prefix: /usr/ } } ] }, action: warn }
  - { id: any-open, title: t, kind: exec, match: { any: [ { path: /a }, { not: { uid: 1 } } ] }, action: warn }
  - { id: port, title: t, kind: [connect, send], match: { port: [22, "8000-8002"] }, action: block }
  - { id: addr, title: t, kind: connect, match: { addr: 10.0.0.0/8 }, action: warn }
  - { id: none, title: t, kind: [open, exec, connect, send, watch, model_call], action: allow, agents: [b] }
  - { id: model, title: t, kind: model_call, match: { provider: [p, q], not: { model: { glob: "m*" } } }, action: block }
  - { id: quota, title: t, kind: model_call, match: { provider: p }, quota: { limit: 2, per: 1h }, action: block }
  - { id: base7, title: t, kind: exec, match: { baseline: { features: [exec_basename] } }, action: warn }
"#;

    fn event(agent: &str, uid: u32, action: String) -> Event {
        Event::from_json(&format!(
            r#"{{"time":"2026-11-23T10:00:00Z","source":"recorded",
                "process":{{"pid":1,"uid":{uid},"exe":"/usr/bin/x","comm":"bash","agent":"{agent}"}},{action}}}"#
        ))
        .unwrap()
    }

    fn action() -> impl Strategy<Value = String> {
        let word = proptest::sample::select(vec![
            "/etc/shadow",
            "/a",
            "/a/b",
            "/home/dev/.ssh/id",
            "/home/u/.aws/c",
            "/x/x.gguf",
            "k.pem",
            "nc",
            "/bin/rm",
            "-rf",
            "/",
            "push",
            "--force",
            "xy",
            "x",
            "ab",
            "",
            "m1",
            "z",
        ]);
        let words = proptest::collection::vec(word.clone(), 0..5);
        prop_oneof![
            (word.clone(), 0u32..3)
                .prop_map(|(p, f)| format!(r#""kind":"open","path":"{p}","flags":{f}"#)),
            (word.clone(), words).prop_map(|(p, argv)| format!(
                r#""kind":"exec","path":"{p}","argv":{}"#,
                serde_json::to_string(&argv).unwrap()
            )),
            (
                prop_oneof![Just(22u16), Just(8001), Just(80)],
                prop_oneof![Just("10.1.2.3"), Just("1.2.3.4")]
            )
                .prop_map(|(port, a)| format!(
                    r#""kind":"connect","dest":{{"family":"inet","addr":"{a}","port":{port}}}"#
                )),
            (prop_oneof![Just(22u16), Just(8003)]).prop_map(|port| format!(
                r#""kind":"send","dest":{{"family":"inet","addr":"1.2.3.4","port":{port}}}"#
            )),
            word.clone()
                .prop_map(|p| format!(r#""kind":"watch","path":"{p}","mask":2"#)),
            (prop_oneof![Just("p"), Just("q"), Just("r")], word).prop_map(|(p, m)| format!(
                r#""kind":"model_call","provider":"{p}","model":"{m}""#
            )),
        ]
    }

    #[test]
    fn conditions_are_indexed_where_possible() {
        let set = RuleSet::from_sources(&[("r.yaml", RULES)]).unwrap();
        let open = &set.by_kind[oknek_event::Kind::Open.index()];
        // glob-x (no literal text) and none (no match) are always candidates.
        assert_eq!(open.unindexed(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn the_index_never_changes_a_decision(
            events in proptest::collection::vec(
                (prop_oneof![Just("a"), Just("b")], 0u32..2, action()),
                1..40,
            )
        ) {
            let set = RuleSet::from_sources(&[("r.yaml", RULES)]).unwrap();
            let baseline = MemoryBaseline::default();
            let (mut indexed, mut every) = (QuotaLedger::new(), QuotaLedger::new());
            for (agent, uid, action) in events {
                let e = event(agent, uid, action);
                let a = set.evaluate(&e, &mut EvalContext::new(&mut indexed, &baseline));
                let b = set.evaluate_every_rule(&e, &mut EvalContext::new(&mut every, &baseline));
                prop_assert_eq!(a, b, "{}", e.to_json());
            }
        }
    }
}
