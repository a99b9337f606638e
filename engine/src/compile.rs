//! From YAML files to a [`RuleSet`]: validation with located errors, list resolution, predicate
//! compilation, indexing and the digest.
//!
//! Every check records its error and carries on, so one load reports every problem of the set.
//! Errors point at tree nodes; positions are looked up only once the set has been rejected.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use oknek_event::{Feature, Field, Kind, Verdict, parse_utc_offset};
use regex::{Regex, RegexBuilder};
use sha2::{Digest, Sha256};

use crate::error::{LoadError, LoadErrors, suggest};
use crate::glob::Glob;
use crate::index::KindIndex;
use crate::predicate::{AddrSet, ArgvCheck, BaselineTest, BitTest, Pred, StrCheck, StrSet};
use crate::quota::{QuotaBy, QuotaSpec, QuotaUnit};
use crate::ruleset::{Rule, RuleSet, RuleSource, Severity};
use crate::when::{When, Window, parse_clock, parse_days};
use crate::yaml::{self, Node, Value};

/// The rule language version this engine reads.
pub const LANGUAGE_VERSION: i128 = 1;
/// Largest total size of a rule set's files.
const MAX_SET_BYTES: u64 = 16 << 20;
/// Most `*.yaml` files in a rules directory.
const MAX_FILES: usize = 4096;
/// Errors listed before the rest are only counted.
const MAX_REPORTED_ERRORS: usize = 100;
/// Deepest `all`/`any`/`not` nesting in a predicate.
const MAX_PREDICATE_DEPTH: u32 = 32;
/// Compiled size limit of one regex (the `regex` crate's measure), and longest pattern.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const MAX_REGEX_LEN: usize = 4096;

pub(crate) struct Source<'a> {
    pub name: String,
    pub bytes: &'a [u8],
}

pub(crate) fn load_dir(dir: &Path, previous: Option<&RuleSet>) -> Result<RuleSet, LoadErrors> {
    let dir_error = |message: String, hint: &str| {
        LoadErrors::single(LoadError {
            file: dir.display().to_string(),
            line: 0,
            column: 0,
            message,
            hint: hint.into(),
        })
    };
    let entries = fs::read_dir(dir).map_err(|err| {
        dir_error(
            format!("cannot read the rules directory: {err}"),
            "give a directory of *.yaml rule files (default /var/lib/oknek/rules/active)",
        )
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| dir_error(format!("cannot list directory: {err}"), ""))?;
        let name = entry.file_name();
        let path = entry.path();
        let is_rule_file = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        // Follows symlinks: a link to a rule file is a rule file; subdirectories are not read.
        if is_rule_file && path.is_file() && !name.to_string_lossy().starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    if names.len() > MAX_FILES {
        return Err(dir_error(
            format!("{} rule files; at most {MAX_FILES} are read", names.len()),
            "merge small files",
        ));
    }
    let mut contents = Vec::with_capacity(names.len());
    let mut total: u64 = 0;
    let mut errors = Vec::new();
    for name in &names {
        let path = dir.join(name);
        let display = path.display().to_string();
        let mut bytes = Vec::new();
        let read = fs::File::open(&path).and_then(|f| {
            // One byte over the limit is enough to know the file is too big.
            f.take(yaml::MAX_FILE_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        });
        if let Err(err) = read {
            errors.push(LoadError {
                file: display,
                line: 0,
                column: 0,
                message: format!("cannot read file: {err}"),
                hint: "check the file's permissions".into(),
            });
            continue;
        }
        total += bytes.len() as u64;
        if total > MAX_SET_BYTES {
            return Err(dir_error(
                format!("rule files total more than {MAX_SET_BYTES} bytes"),
                "a rule set this large is almost certainly a mistake; check the directory",
            ));
        }
        contents.push((display, bytes));
    }
    if !errors.is_empty() {
        return Err(LoadErrors { errors, omitted: 0 });
    }
    let sources: Vec<Source<'_>> = contents
        .iter()
        .map(|(name, bytes)| Source {
            name: name.clone(),
            bytes,
        })
        .collect();
    compile(&sources, previous)
}

struct FileDoc {
    name: Arc<str>,
    text: String,
    root: Option<Node>,
}

/// Where an error is.
#[derive(Debug, Clone, Copy)]
enum At {
    /// A node of a file.
    Node(usize, u32),
    /// A known position in a file.
    Pos(usize, usize, usize),
    /// The whole file.
    File(usize),
}

impl At {
    fn file(self) -> usize {
        match self {
            At::Node(f, _) | At::Pos(f, _, _) | At::File(f) => f,
        }
    }
}

struct Pending {
    at: At,
    message: String,
    hint: String,
    /// A second place worth naming: "first defined at …".
    related: Option<(At, &'static str)>,
}

/// A scalar from a rule or list, with where it was written.
#[derive(Debug, Clone)]
struct Item {
    value: Scalar,
    /// Where to report a problem with it: the value in the rule (or the `$list` reference).
    at: At,
    /// Where a spliced list item was defined.
    origin: Option<At>,
}

#[derive(Debug, Clone)]
enum Scalar {
    Str(String),
    Int(i128),
}

struct ListDef<'d> {
    at: At,
    items: &'d Node,
}

enum Resolution {
    InProgress,
    Done(Option<Rc<[Item]>>),
}

/// Compiles a set; regexes whose pattern `previous` already has are taken from it, which makes a
/// reload of a mostly unchanged set much cheaper (regex compilation dominates otherwise).
pub(crate) fn compile(
    sources: &[Source<'_>],
    previous: Option<&RuleSet>,
) -> Result<RuleSet, LoadErrors> {
    let mut pending = Vec::new();
    let docs: Vec<FileDoc> = sources
        .iter()
        .enumerate()
        .map(|(i, source)| match yaml::parse(source.bytes) {
            Ok((text, root)) => FileDoc {
                name: source.name.as_str().into(),
                text,
                root: Some(root),
            },
            Err(err) => {
                let at = match err.position {
                    Some((line, column)) => At::Pos(i, line, column),
                    None => At::File(i),
                };
                pending.push(Pending {
                    at,
                    message: err.message,
                    hint: err.hint,
                    related: None,
                });
                FileDoc {
                    name: source.name.as_str().into(),
                    text: String::new(),
                    root: None,
                }
            }
        })
        .collect();
    let mut known_regexes = HashMap::new();
    if let Some(previous) = previous {
        let mut regexes = Vec::new();
        for rule in &previous.rules {
            if let Some(pred) = &rule.pred {
                pred.regexes(&mut regexes);
            }
        }
        for regex in regexes {
            known_regexes.insert(regex.as_str().to_owned(), regex.clone());
        }
    }
    let mut compiler = Compiler {
        docs: &docs,
        errors: pending,
        lists: HashMap::new(),
        resolved: HashMap::new(),
        file: 0,
        known_regexes,
    };
    let set = compiler.run();
    if compiler.errors.is_empty() {
        Ok(set)
    } else {
        Err(finish_errors(&docs, compiler.errors))
    }
}

fn finish_errors(docs: &[FileDoc], mut pending: Vec<Pending>) -> LoadErrors {
    let omitted = pending.len().saturating_sub(MAX_REPORTED_ERRORS);
    // Report the first errors in file order (then document order, which node ids follow).
    pending.sort_by_key(|p| match p.at {
        At::File(f) => (f, 0, 0),
        At::Pos(f, l, _) => (f, 1, l),
        At::Node(f, n) => (f, 2, n as usize),
    });
    pending.truncate(MAX_REPORTED_ERRORS);
    // One locating pass per file, for every node an error or its note names.
    let mut targets: Vec<Vec<u32>> = vec![Vec::new(); docs.len()];
    for p in &pending {
        for at in std::iter::once(p.at).chain(p.related.map(|(at, _)| at)) {
            if let At::Node(f, n) = at {
                targets[f].push(n);
            }
        }
    }
    let positions: Vec<HashMap<u32, (usize, usize)>> = docs
        .iter()
        .zip(&targets)
        .map(|(doc, targets)| match (&doc.root, targets.is_empty()) {
            (Some(root), false) => yaml::locate_all(&doc.text, root, targets),
            _ => HashMap::new(),
        })
        .collect();
    let locate = |at: At| -> (String, usize, usize) {
        let (line, column) = match at {
            At::File(_) => (0, 0),
            At::Pos(_, l, c) => (l, c),
            At::Node(f, node) => positions[f].get(&node).copied().unwrap_or((0, 0)),
        };
        (docs[at.file()].name.to_string(), line, column)
    };
    let mut errors: Vec<LoadError> = pending
        .into_iter()
        .map(|p| {
            let (file, line, column) = locate(p.at);
            let mut message = p.message;
            if let Some((at, label)) = p.related {
                let (rfile, rline, rcol) = locate(at);
                if rline > 0 {
                    message.push_str(&format!(" ({label} at {rfile}:{rline}:{rcol})"));
                } else {
                    message.push_str(&format!(" ({label} in {rfile})"));
                }
            }
            LoadError {
                file,
                line,
                column,
                message,
                hint: p.hint,
            }
        })
        .collect();
    errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    // Keep file order as given (names need not sort like the load order).
    let order: HashMap<&str, usize> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (&*d.name, i))
        .collect();
    errors.sort_by_key(|e| order.get(e.file.as_str()).copied().unwrap_or(usize::MAX));
    LoadErrors { errors, omitted }
}

struct Compiler<'d> {
    docs: &'d [FileDoc],
    errors: Vec<Pending>,
    lists: HashMap<&'d str, ListDef<'d>>,
    resolved: HashMap<&'d str, Resolution>,
    /// The file being compiled.
    file: usize,
    /// Compiled regexes of the previous set, by pattern.
    known_regexes: HashMap<String, Regex>,
}

/// The keys of a mapping, checked: strings, no duplicates, no unknown keys.
struct Keys<'d> {
    entries: Vec<(&'d str, &'d Node, &'d Node)>,
    /// Some key was unknown (often a typo of a required one): missing keys are not reported.
    had_unknown: bool,
}

impl<'d> Keys<'d> {
    fn get(&self, key: &str) -> Option<&'d Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, v)| *v)
    }

    fn key_node(&self, key: &str) -> Option<&'d Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, k, _)| *k)
    }
}

const RULE_KEYS: &[&str] = &[
    "id",
    "title",
    "description",
    "kind",
    "agents",
    "match",
    "action",
    "hold",
    "severity",
    "tags",
    "evidence",
    "when",
    "quota",
];

const STRING_TESTS: &[&str] = &[
    "exact", "prefix", "suffix", "contains", "basename", "glob", "regex", "present",
];

const COMBINATORS: &[&str] = &["all", "any", "not", "baseline"];

impl<'d> Compiler<'d> {
    fn run(&mut self) -> RuleSet {
        // Lists first: they are shared by every file of the set.
        let mut list_order: Vec<&'d str> = Vec::new();
        let mut tops: Vec<Option<Keys<'d>>> = Vec::new();
        for (i, doc) in self.docs.iter().enumerate() {
            self.file = i;
            let top = doc.root.as_ref().and_then(|root| self.top_level(root));
            if let Some(lists) = top.as_ref().and_then(|t| t.get("lists")) {
                self.collect_lists(lists, &mut list_order);
            }
            tops.push(top);
        }
        let mut canonical_lists = BTreeMap::new();
        for name in &list_order {
            self.resolve_list(name);
            if let Some(def) = self.lists.get(name) {
                canonical_lists.insert(*name, canonical(def.items));
            }
        }

        let mut rules = Vec::new();
        // The rules' canonical forms, comma-separated, in set order (see `build_set`).
        let mut canonical_rules = String::new();
        let mut ids: HashMap<&'d str, At> = HashMap::new();
        for (i, top) in tops.iter().enumerate() {
            self.file = i;
            let Some(rules_node) = top.as_ref().and_then(|t| t.get("rules")) else {
                continue;
            };
            let Value::Seq(items) = &rules_node.value else {
                self.error(
                    rules_node,
                    format!("`rules` must be a list, found {}", rules_node.type_name()),
                    "write each rule as a list item under `rules:`, starting with `- id: …`",
                );
                continue;
            };
            for (index, rule_node) in items.iter().enumerate() {
                // Duplicate ids are reported even when the rule has other errors.
                if let Some(id_node) = node_get(rule_node, "id")
                    && let Some(id) = id_node.as_str()
                {
                    let at = At::Node(self.file, id_node.id);
                    match ids.get(id) {
                        Some(first) => self.errors.push(Pending {
                            at,
                            message: format!("duplicate rule id `{id}`"),
                            hint: "rule ids must be unique across all files of the set".into(),
                            related: Some((*first, "first defined")),
                        }),
                        None => {
                            ids.insert(id, at);
                        }
                    }
                }
                if let Some(rule) = self.rule(rule_node, index) {
                    if !rules.is_empty() {
                        canonical_rules.push(',');
                    }
                    write_canonical_rule(rule_node, &rule, &mut canonical_rules);
                    rules.push(rule);
                }
            }
        }
        build_set(
            rules,
            self.docs.iter().map(|d| d.name.to_string()).collect(),
            &canonical_lists,
            &canonical_rules,
        )
    }

    // ---------------------------------------------------------------- errors and helpers

    fn error(&mut self, node: &Node, message: impl Into<String>, hint: impl Into<String>) {
        self.errors.push(Pending {
            at: At::Node(self.file, node.id),
            message: message.into(),
            hint: hint.into(),
            related: None,
        });
    }

    fn item_error(&mut self, item: &Item, message: impl Into<String>, hint: impl Into<String>) {
        self.errors.push(Pending {
            at: item.at,
            message: message.into(),
            hint: hint.into(),
            related: item.origin.map(|o| (o, "list item defined")),
        });
    }

    /// Checks that `node` is a mapping with string keys, each known and given once.
    fn keys(&mut self, node: &'d Node, allowed: &[&str], what: &str) -> Option<Keys<'d>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node,
                format!("{what} must be a mapping, found {}", node.type_name()),
                format!("expected keys: {}", allowed.join(", ")),
            );
            return None;
        };
        let mut keys = Keys {
            entries: Vec::with_capacity(entries.len()),
            had_unknown: false,
        };
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                self.error(
                    key,
                    format!("keys of {what} are names, found {}", key.type_name()),
                    format!("expected keys: {}", allowed.join(", ")),
                );
                continue;
            };
            if keys.get(name).is_some() {
                self.error(
                    key,
                    format!("duplicate key `{name}` in {what}"),
                    "give each key once; to test one field twice, use `all: [ … ]`",
                );
                continue;
            }
            if !allowed.contains(&name) {
                let hint = match (name, suggest(name, allowed.iter().copied())) {
                    ("<<", _) => "YAML merge keys (`<<`) are not supported; write the keys out, \
                                  or share values through `lists`"
                        .to_owned(),
                    (_, Some(near)) => format!("did you mean `{near}`?"),
                    (_, None) => format!("expected one of: {}", allowed.join(", ")),
                };
                self.error(key, format!("unknown key `{name}` in {what}"), hint);
                keys.had_unknown = true;
                continue;
            }
            keys.entries.push((name, key, value));
        }
        Some(keys)
    }

    fn required(
        &mut self,
        keys: &Keys<'d>,
        owner: &'d Node,
        key: &str,
        what: &str,
    ) -> Option<&'d Node> {
        let found = keys.get(key);
        if found.is_none() && !keys.had_unknown {
            self.error(
                owner,
                format!("{what} has no `{key}`"),
                format!("add `{key}:`"),
            );
        }
        found
    }

    fn string(&mut self, node: &'d Node, what: &str) -> Option<&'d str> {
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                let hint = match &node.value {
                    Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Null => {
                        "quote the value to make it a string: \"…\""
                    }
                    _ => "write a single string",
                };
                self.error(
                    node,
                    format!("{what} must be a string, found {}", node.type_name()),
                    hint,
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &'d Node, what: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.error(
                    node,
                    format!("{what} must be true or false, found {}", node.type_name()),
                    "write `true` or `false` without quotes",
                );
                None
            }
        }
    }

    fn integer(&mut self, node: &'d Node, what: &str, min: u64, max: u64) -> Option<u64> {
        match node.value {
            Value::Int(n) if n >= i128::from(min) && n <= i128::from(max) => Some(n as u64),
            Value::Int(n) => {
                self.error(
                    node,
                    format!("{what} is {n}, out of range"),
                    format!("use a whole number from {min} to {max}"),
                );
                None
            }
            _ => {
                self.error(
                    node,
                    format!("{what} must be a whole number, found {}", node.type_name()),
                    format!("use a whole number from {min} to {max}, without quotes"),
                );
                None
            }
        }
    }

    /// A list of strings (or one string) without `$list` references.
    fn plain_strings(&mut self, node: &'d Node, what: &str) -> Option<Vec<(&'d str, &'d Node)>> {
        match &node.value {
            Value::Str(s) => Some(vec![(s.as_str(), node)]),
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items {
                    match self.string(item, &format!("each item of {what}")) {
                        Some(s) => out.push((s, item)),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.error(
                    node,
                    format!(
                        "{what} must be a string or a list of strings, found {}",
                        node.type_name()
                    ),
                    "write `[a, b]` or a single value",
                );
                None
            }
        }
    }

    // ---------------------------------------------------------------- files and lists

    fn top_level(&mut self, root: &'d Node) -> Option<Keys<'d>> {
        if root.value == Value::Null {
            self.errors.push(Pending {
                at: At::Pos(self.file, 1, 1),
                message: "empty rule file".into(),
                hint: "start the file with `oknek_rules: 1`, or delete it".into(),
                related: None,
            });
            return None;
        }
        let keys = self.keys(root, &["oknek_rules", "lists", "rules"], "a rule file")?;
        match keys.get("oknek_rules") {
            None => self.error(
                root,
                "missing `oknek_rules: 1` (the rule language version)",
                "add `oknek_rules: 1` as the first line of the file",
            ),
            Some(v) => match v.value {
                Value::Int(LANGUAGE_VERSION) => {}
                Value::Int(n) => self.error(
                    v,
                    format!("unsupported rule language version {n}"),
                    format!("this oknek reads version {LANGUAGE_VERSION}"),
                ),
                _ => self.error(
                    v,
                    format!(
                        "`oknek_rules` must be the number 1, found {}",
                        v.type_name()
                    ),
                    "write `oknek_rules: 1` without quotes",
                ),
            },
        }
        Some(keys)
    }

    fn collect_lists(&mut self, lists: &'d Node, order: &mut Vec<&'d str>) {
        let Value::Map(entries) = &lists.value else {
            self.error(
                lists,
                format!(
                    "`lists` must be a mapping of names to lists, found {}",
                    lists.type_name()
                ),
                "write e.g. `lists: { shells: [bash, sh] }`",
            );
            return;
        };
        for (key, items) in entries {
            let Some(name) = self.string(key, "a list name") else {
                continue;
            };
            if !is_list_name(name) {
                self.error(
                    key,
                    format!("invalid list name `{name}`"),
                    "list names are lowercase letters, digits and `_`, starting with a letter",
                );
                continue;
            }
            let at = At::Node(self.file, key.id);
            if let Some(first) = self.lists.get(name) {
                self.errors.push(Pending {
                    at,
                    message: format!("duplicate list `{name}`"),
                    hint: "list names are shared by all files of the set; rename one, or \
                           edit the file that defines it"
                        .into(),
                    related: Some((first.at, "first defined")),
                });
                continue;
            }
            if !matches!(items.value, Value::Seq(_)) {
                self.error(
                    items,
                    format!(
                        "list `{name}` must be a list of strings or numbers, found {}",
                        items.type_name()
                    ),
                    "write `[a, b]` or one `- item` per line",
                );
            }
            self.lists.insert(name, ListDef { at, items });
            order.push(name);
        }
    }

    /// The items of a list with `$name` items spliced in; `None` if it (or a list it uses) is bad.
    fn resolve_list(&mut self, name: &'d str) -> Option<Rc<[Item]>> {
        match self.resolved.get(name) {
            Some(Resolution::Done(items)) => return items.clone(),
            Some(Resolution::InProgress) => return None,
            None => {}
        }
        let def = self.lists.get(name)?;
        let (def_file, items_node) = (def.at.file(), def.items);
        self.resolved.insert(name, Resolution::InProgress);
        let saved = self.file;
        self.file = def_file;
        let mut out = Vec::new();
        let mut ok = true;
        if let Value::Seq(items) = &items_node.value {
            for item in items {
                let at = At::Node(def_file, item.id);
                match &item.value {
                    Value::Str(s) => match reference(s) {
                        Ref::Literal(text) => out.push(Item {
                            value: Scalar::Str(text),
                            at,
                            origin: None,
                        }),
                        Ref::List(other) => match self.splice(other, item) {
                            Some(spliced) => out.extend(spliced.iter().map(|i| Item {
                                at,
                                origin: i.origin.or(Some(i.at)),
                                ..i.clone()
                            })),
                            None => ok = false,
                        },
                        Ref::Invalid => {
                            self.bad_reference(item, s);
                            ok = false;
                        }
                    },
                    Value::Int(n) => out.push(Item {
                        value: Scalar::Int(*n),
                        at,
                        origin: None,
                    }),
                    _ => {
                        self.error(
                            item,
                            format!(
                                "list items are strings or numbers, found {}",
                                item.type_name()
                            ),
                            "quote the value, or remove it",
                        );
                        ok = false;
                    }
                }
            }
        } else {
            ok = false;
        }
        self.file = saved;
        let result: Option<Rc<[Item]>> = ok.then(|| out.into());
        self.resolved.insert(name, Resolution::Done(result.clone()));
        result
    }

    /// The items of list `name`, referenced by `node`; reports undefined lists and cycles.
    fn splice(&mut self, name: &str, node: &'d Node) -> Option<Rc<[Item]>> {
        let Some((&key, _)) = self.lists.get_key_value(name) else {
            let hint = match suggest(name, self.lists.keys().copied()) {
                Some(near) => format!("did you mean `${near}`? (a literal `$` is written `$$`)"),
                None => {
                    "define it under `lists:` in any file of the set; a literal `$` is written `$$`"
                        .into()
                }
            };
            self.error(node, format!("undefined list `${name}`"), hint);
            return None;
        };
        if matches!(self.resolved.get(key), Some(Resolution::InProgress)) {
            self.error(
                node,
                format!("circular list reference: `${name}` is already being expanded"),
                "lists may include other lists, but not themselves, directly or indirectly",
            );
            return None;
        }
        self.resolve_list(key)
    }

    fn bad_reference(&mut self, node: &'d Node, s: &str) {
        self.error(
            node,
            format!("`{s}` is not a valid list reference"),
            format!(
                "list names are lowercase letters, digits and `_`; for a literal value starting \
                 with `$`, write `${s}`"
            ),
        );
    }

    /// A test's values: one scalar, a list of scalars, or `$name`; lists are spliced.
    /// `allow_empty`: an inline `[]` is an error (the test could never hold), an empty `$list` is not.
    fn values(&mut self, node: &'d Node, what: &str) -> Option<Vec<Item>> {
        let at = At::Node(self.file, node.id);
        let mut out = Vec::new();
        let mut ok = true;
        let one = |this: &mut Self, item: &'d Node, out: &mut Vec<Item>| -> bool {
            let at = At::Node(this.file, item.id);
            match &item.value {
                Value::Str(s) => match reference(s) {
                    Ref::Literal(text) => {
                        out.push(Item {
                            value: Scalar::Str(text),
                            at,
                            origin: None,
                        });
                        true
                    }
                    Ref::List(name) => match this.splice(name, item) {
                        Some(items) => {
                            out.extend(items.iter().map(|i| Item {
                                at,
                                origin: i.origin.or(Some(i.at)),
                                ..i.clone()
                            }));
                            true
                        }
                        None => false,
                    },
                    Ref::Invalid => {
                        this.bad_reference(item, s);
                        false
                    }
                },
                Value::Int(n) => {
                    out.push(Item {
                        value: Scalar::Int(*n),
                        at,
                        origin: None,
                    });
                    true
                }
                _ => {
                    this.error(
                        item,
                        format!(
                            "{what}: expected a string or number, found {}",
                            item.type_name()
                        ),
                        "write a value, a list `[a, b]`, or a `$list` reference",
                    );
                    false
                }
            }
        };
        match &node.value {
            Value::Seq(items) => {
                if items.is_empty() {
                    self.error(
                        node,
                        format!("{what}: empty list, the test can never hold"),
                        "give at least one value, or remove the test",
                    );
                    return None;
                }
                for item in items {
                    ok &= one(self, item, &mut out);
                }
            }
            Value::Str(_) | Value::Int(_) => ok = one(self, node, &mut out),
            _ => {
                self.errors.push(Pending {
                    at,
                    message: format!(
                        "{what}: expected a value or a list of values, found {}",
                        node.type_name()
                    ),
                    hint: "write a value, a list `[a, b]`, or a `$list` reference".into(),
                    related: None,
                });
                return None;
            }
        }
        ok.then_some(out)
    }

    /// Values that must all be strings.
    fn string_values(&mut self, node: &'d Node, what: &str) -> Option<Vec<String>> {
        let items = self.values(node, what)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match item.value {
                Scalar::Str(ref s) => out.push(s.clone()),
                Scalar::Int(n) => {
                    self.item_error(
                        &item,
                        format!("{what}: expected a string, found the number {n}"),
                        format!("quote it: \"{n}\""),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    // ---------------------------------------------------------------- rules

    /// Compiles one rule.
    fn rule(&mut self, node: &'d Node, index: usize) -> Option<Rule> {
        let keys = self.keys(node, RULE_KEYS, "a rule")?;
        let errors_before = self.errors.len();
        let id_node = self.required(&keys, node, "id", "the rule");
        let id = id_node.and_then(|n| self.string(n, "`id`"));
        if let (Some(id), Some(n)) = (id, id_node)
            && !is_rule_id(id)
        {
            self.error(
                n,
                format!("invalid rule id `{id}`"),
                "ids are 1 to 128 letters, digits, `.`, `_` or `-` (e.g. R1.ssh)",
            );
        }
        let title = self
            .required(&keys, node, "title", "the rule")
            .and_then(|n| self.string(n, "`title`").map(|t| (t, n)));
        if let Some((t, n)) = title
            && (t.trim().is_empty() || t.contains('\n'))
        {
            self.error(
                n,
                "`title` must be one non-empty line",
                "put longer text in `description`",
            );
        }
        let description = keys
            .get("description")
            .and_then(|n| self.string(n, "`description`"));
        let kinds = self
            .required(&keys, node, "kind", "the rule")
            .and_then(|n| self.kinds(n));
        let action = self
            .required(&keys, node, "action", "the rule")
            .and_then(|n| self.action(n));
        let agents = match keys.get("agents") {
            None => Some(None),
            Some(n) => self.string_values(n, "`agents`").map(Some),
        };
        let severity = match keys.get("severity") {
            None => Some(Severity::Medium),
            Some(n) => self.severity(n),
        };
        let hold = match keys.get("hold") {
            None => Some(false),
            Some(n) => {
                let hold = self.boolean(n, "`hold`");
                if hold == Some(true) && action.is_some_and(|a| a != Verdict::Block) {
                    self.error(
                        n,
                        "`hold: true` on a rule whose action is not block",
                        "hold stops the agent after a block; use it with `action: block`, or remove it",
                    );
                }
                hold
            }
        };
        let tags = match keys.get("tags") {
            None => Some(Vec::new()),
            Some(n) => self
                .plain_strings(n, "`tags`")
                .map(|v| v.into_iter().map(|(s, _)| s.to_owned()).collect()),
        };

        // What depends on the kinds is checked only when the kinds are known.
        let mut pred = None;
        let mut capture = None;
        let mut when = None;
        let mut quota = None;
        if let Some(kinds) = &kinds {
            if let Some(m) = keys.get("match") {
                pred = self.predicate(m, kinds, 0);
            }
            if let Some(e) = keys.get("evidence") {
                capture = self.evidence(e, kinds);
            }
            if let Some(w) = keys.get("when") {
                when = self.when(w);
            }
            if let Some(q) = keys.get("quota") {
                quota = self.quota(q, kinds);
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        let (id, (title, _), kinds, action) = (id?, title?, kinds?, action?);
        let rule = Rule {
            id: id.into(),
            title: title.into(),
            description: description.map(str::to_owned),
            kinds,
            agents: agents?,
            agent_bits: Vec::new(),
            pred,
            action,
            hold: hold?,
            severity: severity?,
            tags: tags?.into(),
            capture,
            when,
            quota,
            source: RuleSource {
                file: Arc::clone(&self.docs[self.file].name),
                index,
            },
        };
        Some(rule)
    }

    fn kinds(&mut self, node: &'d Node) -> Option<Vec<Kind>> {
        let names = self.plain_strings(node, "`kind`")?;
        if names.is_empty() {
            self.error(node, "`kind` is an empty list", "name at least one kind");
            return None;
        }
        let mut kinds = Vec::new();
        let mut ok = true;
        for (name, n) in names {
            match Kind::from_name(name) {
                Some(k) if kinds.contains(&k) => {
                    self.error(
                        n,
                        format!("kind `{name}` listed twice"),
                        "remove the duplicate",
                    );
                    ok = false;
                }
                Some(k) => kinds.push(k),
                None => {
                    let names = Kind::ALL.map(Kind::name);
                    let hint = match suggest(name, names) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => format!("kinds are: {}", names.join(", ")),
                    };
                    self.error(n, format!("unknown kind `{name}`"), hint);
                    ok = false;
                }
            }
        }
        kinds.sort();
        ok.then_some(kinds)
    }

    fn action(&mut self, node: &'d Node) -> Option<Verdict> {
        let name = self.string(node, "`action`")?;
        let action = Verdict::from_name(name);
        if action.is_none() {
            let hint = match suggest(name, ["allow", "warn", "block"]) {
                Some(near) => format!("did you mean `{near}`?"),
                None => "actions are: allow, warn, block".into(),
            };
            self.error(node, format!("unknown action `{name}`"), hint);
        }
        action
    }

    fn severity(&mut self, node: &'d Node) -> Option<Severity> {
        let name = self.string(node, "`severity`")?;
        let severity = Severity::from_name(name);
        if severity.is_none() {
            self.error(
                node,
                format!("unknown severity `{name}`"),
                "severities are: info, low, medium, high, critical",
            );
        }
        severity
    }

    fn evidence(&mut self, node: &'d Node, kinds: &[Kind]) -> Option<Arc<[Field]>> {
        let keys = self.keys(node, &["capture"], "`evidence`")?;
        let capture = keys.get("capture")?;
        let names = self.plain_strings(capture, "`evidence.capture`")?;
        let mut fields = Vec::new();
        let mut ok = true;
        for (name, n) in names {
            match self.field(name, n, kinds) {
                Some(f) if !fields.contains(&f) => fields.push(f),
                Some(_) => {}
                None => ok = false,
            }
        }
        ok.then(|| fields.into())
    }

    /// A field name valid for every kind of the rule.
    fn field(&mut self, name: &str, node: &'d Node, kinds: &[Kind]) -> Option<Field> {
        let Ok(field) = Field::from_name(name) else {
            let hint = match suggest(name, Field::all_names()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!(
                    "fields are: {}",
                    Field::all_names().collect::<Vec<_>>().join(", ")
                ),
            };
            self.error(node, format!("unknown field `{name}`"), hint);
            return None;
        };
        if let Some(kind) = kinds.iter().find(|k| !field.applies_to(**k)) {
            let valid: Vec<&str> = crate::ruleset::ALL_FIELDS
                .iter()
                .filter(|f| !f.is_process() && f.applies_to(*kind))
                .map(|f| f.name())
                .collect();
            self.error(
                node,
                format!("field `{name}` does not exist on {kind} events"),
                format!(
                    "{kind} events carry the process fields and: {}{}",
                    valid.join(", "),
                    if kinds.len() > 1 {
                        "; a rule with several kinds may only use fields all of them carry"
                    } else {
                        ""
                    }
                ),
            );
            return None;
        }
        Some(field)
    }

    // ---------------------------------------------------------------- predicates

    fn predicate(&mut self, node: &'d Node, kinds: &[Kind], depth: u32) -> Option<Pred> {
        if depth > MAX_PREDICATE_DEPTH {
            self.error(
                node,
                format!("predicate nested more than {MAX_PREDICATE_DEPTH} levels deep"),
                "flatten nested `all`/`any`/`not`",
            );
            return None;
        }
        let Value::Map(entries) = &node.value else {
            self.error(
                node,
                format!(
                    "a predicate must be a mapping of tests, found {}",
                    node.type_name()
                ),
                "write e.g. `path: { prefix: /home/ }`",
            );
            return None;
        };
        let mut preds = Vec::new();
        let mut ok = true;
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in entries {
            let Some(name) = self.string(key, "a predicate key") else {
                ok = false;
                continue;
            };
            if seen.contains(&name) {
                self.error(
                    key,
                    format!("duplicate key `{name}` in a predicate"),
                    "to test one field twice, use `all: [ … ]`",
                );
                ok = false;
                continue;
            }
            seen.push(name);
            let pred = match name {
                "all" | "any" => self.combinator(name, value, kinds, depth),
                "not" => self
                    .predicate(value, kinds, depth + 1)
                    .map(|p| Pred::Not(Box::new(p))),
                "baseline" => self.baseline(value, kinds),
                _ if Field::from_name(name).is_err() => {
                    let candidates = Field::all_names().chain(COMBINATORS.iter().copied());
                    let hint = match suggest(name, candidates) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => format!(
                            "a predicate key is a field ({}) or one of: {}",
                            Field::all_names().collect::<Vec<_>>().join(", "),
                            COMBINATORS.join(", ")
                        ),
                    };
                    self.error(key, format!("unknown field `{name}`"), hint);
                    None
                }
                _ => self
                    .field(name, key, kinds)
                    .and_then(|field| self.field_test(field, value)),
            };
            match pred {
                Some(p) => preds.push(p),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(conjunction(preds))
    }

    fn combinator(
        &mut self,
        name: &str,
        node: &'d Node,
        kinds: &[Kind],
        depth: u32,
    ) -> Option<Pred> {
        let Value::Seq(items) = &node.value else {
            self.error(
                node,
                format!(
                    "`{name}` takes a list of predicates, found {}",
                    node.type_name()
                ),
                format!("write `{name}: [ {{ … }}, {{ … }} ]`"),
            );
            return None;
        };
        if items.is_empty() {
            let meaning = if name == "all" {
                "always holds"
            } else {
                "never holds"
            };
            self.error(
                node,
                format!("`{name}: []` {meaning}"),
                "give at least one predicate, or remove it",
            );
            return None;
        }
        let mut preds = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.predicate(item, kinds, depth + 1) {
                Some(p) => preds.push(p),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(if name == "all" {
            conjunction(preds)
        } else if preds.len() == 1 {
            preds.pop()?
        } else {
            Pred::Any(preds.into())
        })
    }

    fn field_test(&mut self, field: Field, node: &'d Node) -> Option<Pred> {
        use Field::*;
        match field {
            Pid | Ppid | Tgid | Uid | Gid | CgroupId | Port | Bytes | Mode => {
                if let Some(p) = self.present_only(field, node) {
                    return p;
                }
                self.number_test(field, node)
            }
            Addr => {
                if let Some(p) = self.present_only(field, node) {
                    return p;
                }
                self.addr_test(node)
            }
            Argv => self.argv_test(node),
            Flags => self.bits_test(field, node, OPEN_FLAGS, true),
            Mask => self.bits_test(field, node, INOTIFY_BITS, false),
            _ => self.string_test(field, node),
        }
    }

    /// `{ present: bool }` for fields whose other tests are not mappings.
    fn present_only(&mut self, field: Field, node: &'d Node) -> Option<Option<Pred>> {
        if !matches!(node.value, Value::Map(_)) {
            return None;
        }
        if node.as_map().is_some_and(<[_]>::is_empty) {
            self.error(node, "empty test", "write `{ present: true }` or a value");
            return Some(None);
        }
        let Some(keys) = self.keys(node, &["present"], &format!("the `{field}` test")) else {
            return Some(None);
        };
        let present = keys
            .get("present")
            .and_then(|n| self.boolean(n, "`present`"));
        Some(present.map(|present| Pred::Present { field, present }))
    }

    fn number_test(&mut self, field: Field, node: &'d Node) -> Option<Pred> {
        let max: u64 = match field {
            Field::Port => u16::MAX.into(),
            Field::CgroupId | Field::Bytes => u64::MAX,
            _ => u32::MAX.into(),
        };
        let what = format!("`{field}`");
        let items = self.values(node, &what)?;
        let mut ranges = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in &items {
            let range = match &item.value {
                Scalar::Int(n) => u64::try_from(*n).ok().map(|n| (n, n)),
                Scalar::Str(s) => parse_range(s),
            };
            match range {
                Some((lo, hi)) if lo <= hi && hi <= max => ranges.push((lo, hi)),
                Some((lo, hi)) if lo > hi => {
                    self.item_error(
                        item,
                        format!("{what}: range {lo}-{hi} is reversed"),
                        format!("write {hi}-{lo}"),
                    );
                    ok = false;
                }
                _ => {
                    let shown = match &item.value {
                        Scalar::Int(n) => n.to_string(),
                        Scalar::Str(s) => format!("\"{s}\""),
                    };
                    self.item_error(
                        item,
                        format!("{what}: {shown} is not a number or range from 0 to {max}"),
                        "write a number (443), a quoted range (\"8000-8100\") or a list of both",
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| Pred::Num {
            field,
            ranges: ranges.into(),
        })
    }

    fn addr_test(&mut self, node: &'d Node) -> Option<Pred> {
        let items = self.values(node, "`addr`")?;
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut ok = true;
        for item in &items {
            let parsed = match &item.value {
                Scalar::Str(s) => parse_cidr(s),
                Scalar::Int(n) => Err(format!("{n} is not an IP address")),
            };
            match parsed {
                Ok(Net::V4(net, mask)) => v4.push((net, mask)),
                Ok(Net::V6(net, mask)) => v6.push((net, mask)),
                Err(message) => {
                    self.item_error(
                        item,
                        format!("`addr`: {message}"),
                        "write an address (10.1.2.3, ::1) or a CIDR (10.0.0.0/8, fe80::/10)",
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| {
            Pred::Addr(AddrSet {
                v4: v4.into(),
                v6: v6.into(),
            })
        })
    }

    fn string_test(&mut self, field: Field, node: &'d Node) -> Option<Pred> {
        if !matches!(node.value, Value::Map(_)) {
            let values = self.string_values(node, &format!("`{field}`"))?;
            self.check_family(field, &values, node);
            return Some(Pred::Str {
                field,
                check: StrCheck::Exact(StrSet::new(values.into_iter().map(Into::into).collect())),
            });
        }
        let (checks, present) = self.string_checks(node, Some(field))?;
        let mut preds: Vec<Pred> = Vec::new();
        if let Some(present) = present {
            preds.push(Pred::Present { field, present });
        }
        preds.extend(checks.into_iter().map(|check| Pred::Str { field, check }));
        Some(conjunction(preds))
    }

    /// The tests of a string-test mapping; `field` is `None` for argv `element`.
    fn string_checks(
        &mut self,
        node: &'d Node,
        field: Option<Field>,
    ) -> Option<(Vec<StrCheck>, Option<bool>)> {
        let allowed = if field.is_some() {
            STRING_TESTS
        } else {
            &STRING_TESTS[..STRING_TESTS.len() - 1]
        };
        let what = match field {
            Some(f) => format!("the `{f}` test"),
            None => "`element`".to_owned(),
        };
        let keys = self.keys(node, allowed, &what)?;
        if node.as_map().is_some_and(<[_]>::is_empty) {
            self.error(
                node,
                format!("{what} is empty"),
                format!("give one of: {}", allowed.join(", ")),
            );
            return None;
        }
        let mut checks = Vec::new();
        let mut present = None;
        let mut ok = true;
        for &(name, _, value) in &keys.entries {
            if name == "present" {
                match self.boolean(value, "`present`") {
                    Some(b) => present = Some(b),
                    None => ok = false,
                }
                continue;
            }
            let label = format!("`{name}`");
            let Some(values) = self.string_values(value, &label) else {
                ok = false;
                continue;
            };
            let check = match name {
                "exact" => {
                    if let Some(f) = field {
                        self.check_family(f, &values, value);
                    }
                    Some(StrCheck::Exact(StrSet::new(boxed(values))))
                }
                "prefix" => Some(StrCheck::Prefix(boxed(values).into())),
                "suffix" => Some(StrCheck::Suffix(boxed(values).into())),
                "contains" => Some(StrCheck::Contains(boxed(values).into())),
                "basename" => Some(StrCheck::Basename(StrSet::new(boxed(values)))),
                "glob" => self.globs(value, values).map(StrCheck::Glob),
                "regex" => self.regexes(value, values).map(StrCheck::Regex),
                _ => None,
            };
            match check {
                Some(c) => checks.push(c),
                None => ok = false,
            }
        }
        ok.then_some((checks, present))
    }

    fn check_family(&mut self, field: Field, values: &[String], node: &'d Node) {
        if field == Field::Family
            && let Some(bad) = values
                .iter()
                .find(|v| !matches!(v.as_str(), "inet" | "inet6" | "unix"))
        {
            self.error(
                node,
                format!("`family`: unknown address family `{bad}`"),
                "families are: inet, inet6, unix",
            );
        }
    }

    fn globs(&mut self, node: &'d Node, values: Vec<String>) -> Option<Box<[Glob]>> {
        let mut globs = Vec::with_capacity(values.len());
        let mut ok = true;
        for v in values {
            match Glob::new(&v) {
                Ok(g) => globs.push(g),
                Err(err) => {
                    self.error_at_value(node, &v, format!("bad glob `{v}`: {err}"), GLOB_HINT);
                    ok = false;
                }
            }
        }
        ok.then(|| globs.into())
    }

    fn regexes(&mut self, node: &'d Node, values: Vec<String>) -> Option<Box<[Regex]>> {
        let mut regexes = Vec::with_capacity(values.len());
        let mut ok = true;
        for v in values {
            let known = self.known_regexes.get(&v).cloned();
            match known.map_or_else(|| compile_regex(&v), Ok) {
                Ok(r) => regexes.push(r),
                Err((message, hint)) => {
                    self.error_at_value(node, &v, message, hint);
                    ok = false;
                }
            }
        }
        ok.then(|| regexes.into())
    }

    /// Reports at the list item holding `value` when `node` is an inline list.
    fn error_at_value(&mut self, node: &'d Node, value: &str, message: String, hint: &str) {
        let target = match &node.value {
            Value::Seq(items) => items
                .iter()
                .find(|i| i.as_str() == Some(value))
                .unwrap_or(node),
            _ => node,
        };
        self.error(target, message, hint);
    }

    fn argv_test(&mut self, node: &'d Node) -> Option<Pred> {
        let keys = self.keys(
            node,
            &["contains", "contains_all", "element", "regex", "present"],
            "the `argv` test",
        )?;
        if node.as_map().is_some_and(<[_]>::is_empty) {
            self.error(
                node,
                "the `argv` test is empty",
                "give one of: contains, contains_all, element, regex",
            );
            return None;
        }
        let mut preds = Vec::new();
        let mut ok = true;
        for &(name, _, value) in &keys.entries {
            let pred = match name {
                "contains" => self
                    .string_values(value, "`contains`")
                    .map(|v| Pred::Argv(ArgvCheck::Contains(StrSet::new(boxed(v))))),
                "contains_all" => self
                    .string_values(value, "`contains_all`")
                    .map(|v| Pred::Argv(ArgvCheck::ContainsAll(boxed(v).into()))),
                "regex" => self
                    .string_values(value, "`regex`")
                    .and_then(|v| self.regexes(value, v))
                    .map(|r| Pred::Argv(ArgvCheck::Regex(r))),
                "element" => {
                    if matches!(value.value, Value::Map(_)) {
                        self.string_checks(value, None)
                            .map(|(checks, _)| Pred::Argv(ArgvCheck::Element(checks.into())))
                    } else {
                        self.string_values(value, "`element`").map(|v| {
                            Pred::Argv(ArgvCheck::Element(
                                [StrCheck::Exact(StrSet::new(boxed(v)))].into(),
                            ))
                        })
                    }
                }
                "present" => self
                    .boolean(value, "`present`")
                    .map(|present| Pred::Present {
                        field: Field::Argv,
                        present,
                    }),
                _ => None,
            };
            match pred {
                Some(p) => preds.push(p),
                None => ok = false,
            }
        }
        ok.then(|| conjunction(preds))
    }

    fn bits_test(
        &mut self,
        field: Field,
        node: &'d Node,
        names: &[(&str, u32)],
        open: bool,
    ) -> Option<Pred> {
        let allowed: &[&str] = if open {
            &["write", "any_of", "all_of", "none_of", "present"]
        } else {
            &["any_of", "all_of", "none_of", "present"]
        };
        let keys = self.keys(node, allowed, &format!("the `{field}` test"))?;
        if node.as_map().is_some_and(<[_]>::is_empty) {
            self.error(
                node,
                format!("the `{field}` test is empty"),
                format!("give one of: {}", allowed.join(", ")),
            );
            return None;
        }
        let mut preds = Vec::new();
        let mut ok = true;
        for &(name, _, value) in &keys.entries {
            let pred = match name {
                "write" => self.boolean(value, "`write`").map(Pred::Write),
                "present" => self
                    .boolean(value, "`present`")
                    .map(|present| Pred::Present { field, present }),
                _ => {
                    let test = match name {
                        "any_of" => BitTest::Any,
                        "all_of" => BitTest::All,
                        _ => BitTest::None,
                    };
                    self.bit_names(value, name, names, open)
                        .map(|bits| Pred::Bits { field, test, bits })
                }
            };
            match pred {
                Some(p) => preds.push(p),
                None => ok = false,
            }
        }
        ok.then(|| conjunction(preds))
    }

    fn bit_names(
        &mut self,
        node: &'d Node,
        test: &str,
        names: &[(&str, u32)],
        open: bool,
    ) -> Option<Box<[u32]>> {
        let items = self.values(node, &format!("`{test}`"))?;
        let mut bits = Vec::new();
        let mut ok = true;
        for item in &items {
            let name = match &item.value {
                Scalar::Str(s) => s.as_str(),
                Scalar::Int(_) => "",
            };
            match names.iter().find(|(n, _)| *n == name) {
                Some((_, b)) => bits.push(*b),
                None => {
                    let hint = if name == "O_RDONLY" {
                        "O_RDONLY is 0 and cannot be tested as a bit; use `write: false`".to_owned()
                    } else if let Some(near) = suggest(name, names.iter().map(|(n, _)| *n)) {
                        format!("did you mean `{near}`?")
                    } else {
                        format!(
                            "{} are: {}",
                            if open { "open flags" } else { "inotify events" },
                            names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        )
                    };
                    let shown = match &item.value {
                        Scalar::Str(s) => s.clone(),
                        Scalar::Int(n) => n.to_string(),
                    };
                    self.item_error(item, format!("`{test}`: unknown name `{shown}`"), hint);
                    ok = false;
                }
            }
        }
        ok.then(|| bits.into())
    }

    fn baseline(&mut self, node: &'d Node, kinds: &[Kind]) -> Option<Pred> {
        let keys = self.keys(
            node,
            &["features", "seen_fewer_than", "warmup"],
            "`baseline`",
        )?;
        let features_node = self.required(&keys, node, "features", "`baseline`");
        let mut features = Vec::new();
        let mut ok = features_node.is_some();
        if let Some(names) = features_node.and_then(|n| self.plain_strings(n, "`features`")) {
            for (name, n) in names {
                match Feature::from_name(name) {
                    Some(f) if !kinds.iter().any(|k| f.applies_to(*k)) => {
                        let valid: Vec<&str> = Feature::ALL
                            .iter()
                            .filter(|f| kinds.iter().any(|k| f.applies_to(*k)))
                            .map(|f| f.name())
                            .collect();
                        self.error(
                            n,
                            format!(
                                "feature `{name}` does not apply to {} events",
                                kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join("/")
                            ),
                            if valid.is_empty() {
                                "no baseline feature applies to this rule's kinds".to_owned()
                            } else {
                                format!("features of this rule's kinds: {}", valid.join(", "))
                            },
                        );
                        ok = false;
                    }
                    Some(f) => {
                        if !features.contains(&f) {
                            features.push(f);
                        }
                    }
                    None => {
                        let names = Feature::ALL.map(Feature::name);
                        let hint = match suggest(name, names) {
                            Some(near) => format!("did you mean `{near}`?"),
                            None => format!("features are: {}", names.join(", ")),
                        };
                        self.error(n, format!("unknown baseline feature `{name}`"), hint);
                        ok = false;
                    }
                }
            }
            if features.is_empty() && ok {
                self.error(node, "`features` is empty", "name at least one feature");
                ok = false;
            }
        } else {
            ok = false;
        }
        let seen_fewer_than = match keys.get("seen_fewer_than") {
            None => Some(1),
            Some(n) => self.integer(n, "`seen_fewer_than`", 1, u64::MAX),
        };
        let warmup = match keys.get("warmup") {
            None => Some(0),
            Some(n) => self.duration(n, "`warmup`", true),
        };
        let (seen_fewer_than, warmup) = (seen_fewer_than?, warmup?);
        ok.then(|| {
            Pred::Baseline(BaselineTest {
                features: features.into(),
                seen_fewer_than,
                warmup_nanos: (warmup as i64).saturating_mul(1_000_000_000),
            })
        })
    }

    // ---------------------------------------------------------------- when and quota

    fn when(&mut self, node: &'d Node) -> Option<When> {
        let keys = self.keys(node, &["zone", "inside", "outside"], "`when`")?;
        let offset_secs = match keys.get("zone") {
            None => Some(0),
            Some(n) => self.string(n, "`zone`").and_then(|z| {
                let offset = match z {
                    "UTC" | "utc" | "Z" => Some(0),
                    _ => parse_utc_offset(z),
                };
                if offset.is_none() {
                    self.error(
                        n,
                        format!("unknown zone `{z}`"),
                        "write UTC or a fixed offset like \"+01:00\" or \"-05:30\" (quoted)",
                    );
                }
                offset
            }),
        };
        let (inside, windows_node) = match (keys.get("inside"), keys.get("outside")) {
            (Some(w), None) => (true, w),
            (None, Some(w)) => (false, w),
            (Some(_), Some(_)) => {
                self.error(
                    keys.key_node("outside").unwrap_or(node),
                    "`when` has both `inside` and `outside`",
                    "give one of them: inside (the rule applies only in the windows) or outside",
                );
                return None;
            }
            (None, None) => {
                self.error(
                    node,
                    "`when` has neither `inside` nor `outside`",
                    "add `inside: [ { days: [mon-fri], from: \"08:00\", to: \"18:00\" } ]`",
                );
                return None;
            }
        };
        let Value::Seq(items) = &windows_node.value else {
            self.error(
                windows_node,
                format!(
                    "time windows must be a list, found {}",
                    windows_node.type_name()
                ),
                "write `- { days: [mon-fri], from: \"08:00\", to: \"18:00\" }`",
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                windows_node,
                "empty list of time windows",
                "give at least one window",
            );
            return None;
        }
        let mut windows = Vec::new();
        let mut ok = true;
        for item in items {
            match self.window(item) {
                Some(w) => windows.push(w),
                None => ok = false,
            }
        }
        let offset_secs = offset_secs?;
        ok.then(|| When {
            offset_secs,
            inside,
            windows: windows.into(),
        })
    }

    fn window(&mut self, node: &'d Node) -> Option<Window> {
        let keys = self.keys(node, &["days", "from", "to"], "a time window")?;
        let days = match keys.get("days") {
            None => Some(0x7f),
            Some(n) => self.plain_strings(n, "`days`").and_then(|names| {
                let mut mask = 0u8;
                let mut ok = true;
                for (name, item) in names {
                    match parse_days(name) {
                        Some(m) => mask |= m,
                        None => {
                            self.error(
                                item,
                                format!("unknown day or day range `{name}`"),
                                "days are mon, tue, wed, thu, fri, sat, sun; ranges like mon-fri",
                            );
                            ok = false;
                        }
                    }
                }
                if ok && mask == 0 {
                    self.error(n, "`days` is empty", "name at least one day");
                    ok = false;
                }
                ok.then_some(mask)
            }),
        };
        let mut clock = |key: &str| -> Option<Option<u16>> {
            let Some(n) = keys.get(key) else {
                return Some(None);
            };
            let s = self.string(n, &format!("`{key}`"))?;
            match parse_clock(s) {
                Some(m) => Some(Some(m)),
                None => {
                    self.error(
                        n,
                        format!("`{key}`: `{s}` is not a time of day"),
                        "write HH:MM in 24-hour time, quoted: \"08:00\"",
                    );
                    None
                }
            }
        };
        let (from, to) = (clock("from"), clock("to"));
        let (days, from, to) = (days?, from?, to?);
        match (from, to) {
            (Some(from), Some(to)) => Some(Window::new(days, from, to)),
            (None, None) => Some(Window::new(days, 0, 0)),
            _ => {
                self.error(
                    node,
                    "a time window needs both `from` and `to`, or neither (the whole day)",
                    "add the missing one",
                );
                None
            }
        }
    }

    fn quota(&mut self, node: &'d Node, kinds: &[Kind]) -> Option<QuotaSpec> {
        let keys = self.keys(node, &["limit", "per", "by", "unit"], "`quota`")?;
        let limit = self
            .required(&keys, node, "limit", "`quota`")
            .and_then(|n| self.integer(n, "`limit`", 1, 1_000_000_000));
        let per = self
            .required(&keys, node, "per", "`quota`")
            .and_then(|n| self.duration(n, "`per`", false));
        let by = match keys.get("by") {
            None => Some(QuotaBy::Caller),
            Some(n) => self.string(n, "`by`").and_then(|name| {
                let by = QuotaBy::from_name(name);
                match by {
                    None => self.error(
                        n,
                        format!("unknown quota key `{name}`"),
                        "`by` is one of: caller, provider, caller_provider, agent",
                    ),
                    Some(QuotaBy::Provider | QuotaBy::CallerProvider)
                        if kinds.iter().any(|k| *k != Kind::ModelCall) =>
                    {
                        self.error(
                            n,
                            format!("`by: {name}` needs a provider, which only model_call events have"),
                            "use `by: caller` or `by: agent`, or limit the rule to `kind: model_call`",
                        );
                        return None;
                    }
                    Some(_) => {}
                }
                by
            }),
        };
        let unit = match keys.get("unit") {
            None => Some(QuotaUnit::Calls),
            Some(n) => self
                .string(n, "`unit`")
                .and_then(|name| match QuotaUnit::from_name(name) {
                    None => {
                        self.error(
                            n,
                            format!("unknown quota unit `{name}`"),
                            "`unit` is one of: calls, tokens",
                        );
                        None
                    }
                    Some(QuotaUnit::Tokens) if kinds.iter().any(|k| *k != Kind::ModelCall) => {
                        self.error(
                            n,
                            "`unit: tokens` counts model tokens, which only model_call events use",
                            "use `unit: calls`, or limit the rule to `kind: model_call`",
                        );
                        None
                    }
                    unit => unit,
                }),
        };
        Some(QuotaSpec {
            limit: limit?,
            per_secs: per?,
            by: by?,
            unit: unit?,
        })
    }

    /// `Ns`, `Nm`, `Nh`, `Nd` to seconds.
    fn duration(&mut self, node: &'d Node, what: &str, zero_ok: bool) -> Option<u64> {
        let parsed = node.as_str().and_then(parse_duration);
        match parsed {
            Some(0) if !zero_ok => {
                self.error(node, format!("{what} must be longer than zero"), "e.g. 1h");
                None
            }
            Some(secs) => Some(secs),
            None => {
                let shown = match &node.value {
                    Value::Str(s) => format!("`{s}`"),
                    _ => node.type_name().to_owned(),
                };
                self.error(
                    node,
                    format!("{what}: {shown} is not a duration"),
                    "write a whole number and a unit: 30s, 15m, 1h, 7d (at most 3650d)",
                );
                None
            }
        }
    }
}

const GLOB_HINT: &str = "globs use `*` (within a path component), `**` (across `/`), `?`, \
                         `[abc]`, `[a-z]`, `[!a-z]`; `\\` escapes the next character";

fn boxed(values: Vec<String>) -> Vec<Box<str>> {
    values.into_iter().map(String::into_boxed_str).collect()
}

/// All of `preds`, cheapest first; one predicate stays itself.
fn conjunction(mut preds: Vec<Pred>) -> Pred {
    // Flatten nested conjunctions so that cost ordering sees every test.
    let mut flat = Vec::with_capacity(preds.len());
    for p in preds.drain(..) {
        match p {
            Pred::All(inner) => flat.extend(inner.into_vec()),
            p => flat.push(p),
        }
    }
    if flat.len() == 1 {
        return flat.pop().unwrap_or(Pred::All(Box::new([])));
    }
    flat.sort_by_key(Pred::cost);
    Pred::All(flat.into())
}

enum Ref<'a> {
    Literal(String),
    List(&'a str),
    Invalid,
}

/// `$name` is a list reference, `$$x` the literal `$x`, anything else itself.
fn reference(s: &str) -> Ref<'_> {
    match s.strip_prefix('$') {
        None => Ref::Literal(s.to_owned()),
        Some(rest) if rest.starts_with('$') => Ref::Literal(rest.to_owned()),
        Some(name) if is_list_name(name) => Ref::List(name),
        Some(_) => Ref::Invalid,
    }
}

fn is_list_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && s.len() <= 64
}

fn is_rule_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let num = |t: &str| -> Option<u64> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    match s.split_once('-') {
        Some((lo, hi)) => Some((num(lo)?, num(hi)?)),
        None => num(s).map(|n| (n, n)),
    }
}

pub(crate) fn parse_duration(s: &str) -> Option<u64> {
    let unit = match s.bytes().last()? {
        b's' => 1,
        b'm' => 60,
        b'h' => 3600,
        b'd' => 86_400,
        _ => return None,
    };
    let digits = &s[..s.len() - 1];
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = digits.parse::<u64>().ok()?.checked_mul(unit)?;
    (secs <= 3650 * 86_400).then_some(secs)
}

#[derive(Debug)]
enum Net {
    V4(u32, u32),
    V6(u128, u128),
}

fn parse_cidr(s: &str) -> Result<Net, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => {
            if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("`{s}`: bad prefix length `/{l}`"));
            }
            (
                a,
                Some(
                    l.parse::<u32>()
                        .map_err(|_| format!("`{s}`: bad prefix length"))?,
                ),
            )
        }
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
    let (ip, len) = match (ip, len) {
        // An IPv4-mapped network is an IPv4 network.
        (IpAddr::V6(v6), Some(len)) if len >= 96 && v6.to_ipv4_mapped().is_some() => (
            IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
            Some(len - 96),
        ),
        (IpAddr::V6(v6), None) if v6.to_ipv4_mapped().is_some() => (
            IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
            None,
        ),
        other => other,
    };
    match ip {
        IpAddr::V4(v4) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return Err(format!("`{s}`: an IPv4 prefix is at most /32"));
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let a = u32::from(v4);
            if a & !mask != 0 {
                return Err(format!(
                    "`{s}` has host bits set; the network is {}/{len}",
                    Ipv4Addr::from(a & mask)
                ));
            }
            Ok(Net::V4(a, mask))
        }
        IpAddr::V6(v6) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return Err(format!("`{s}`: an IPv6 prefix is at most /128"));
            }
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            let a = u128::from(v6);
            if a & !mask != 0 {
                return Err(format!(
                    "`{s}` has host bits set; the network is {}/{len}",
                    Ipv6Addr::from(a & mask)
                ));
            }
            Ok(Net::V6(a, mask))
        }
    }
}

fn compile_regex(pattern: &str) -> Result<Regex, (String, &'static str)> {
    const HINT: &str = "oknek regexes are linear-time (Rust regex syntax): no backreferences or \
                        look-around; anchor with ^…$";
    // oknek is built without the regex crate's Unicode property tables (see Cargo.toml).
    const UNICODE_HINT: &str = "Unicode property classes (\\p{…}) are not available; the Perl \
                                classes \\w \\d \\s and (?i) are Unicode-aware";
    if pattern.len() > MAX_REGEX_LEN {
        return Err((
            format!(
                "regex is {} bytes long; at most {MAX_REGEX_LEN} are allowed",
                pattern.len()
            ),
            "split it, or match with prefix/suffix/glob tests",
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(64)
        .build()
        .map_err(|err| match err {
            regex::Error::CompiledTooBig(_) => (
                format!("regex `{pattern}` compiles too big"),
                "large counted repetitions ({1000}) and Unicode classes (\\w, \\d) grow a regex; \
                 use smaller counts, or (?-u) for ASCII classes",
            ),
            err => {
                // The syntax error's last line says what is wrong; the lines above draw a caret.
                let text = err.to_string();
                let reason = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_owned();
                let hint = if reason.contains("Unicode property") {
                    UNICODE_HINT
                } else {
                    HINT
                };
                (format!("bad regex `{pattern}`: {reason}"), hint)
            }
        })
}

const OPEN_FLAGS: &[(&str, u32)] = &[
    ("O_WRONLY", 0o1),
    ("O_RDWR", 0o2),
    ("O_CREAT", 0o100),
    ("O_EXCL", 0o200),
    ("O_NOCTTY", 0o400),
    ("O_TRUNC", 0o1000),
    ("O_APPEND", 0o2000),
    ("O_NONBLOCK", 0o4000),
    ("O_DSYNC", 0o10000),
    ("O_ASYNC", 0o20000),
    ("O_DIRECT", 0o40000),
    ("O_LARGEFILE", 0o100000),
    ("O_DIRECTORY", 0o200000),
    ("O_NOFOLLOW", 0o400000),
    ("O_NOATIME", 0o1000000),
    ("O_CLOEXEC", 0o2000000),
    ("O_SYNC", 0o4010000),
    ("O_PATH", 0o10000000),
    ("O_TMPFILE", 0o20200000),
];

const INOTIFY_BITS: &[(&str, u32)] = &[
    ("IN_ACCESS", 0x1),
    ("IN_MODIFY", 0x2),
    ("IN_ATTRIB", 0x4),
    ("IN_CLOSE_WRITE", 0x8),
    ("IN_CLOSE_NOWRITE", 0x10),
    ("IN_OPEN", 0x20),
    ("IN_MOVED_FROM", 0x40),
    ("IN_MOVED_TO", 0x80),
    ("IN_CREATE", 0x100),
    ("IN_DELETE", 0x200),
    ("IN_DELETE_SELF", 0x400),
    ("IN_MOVE_SELF", 0x800),
];

// -------------------------------------------------------------------- digest

/// Canonical JSON of a node: keys sorted by bytes, no whitespace.
fn canonical(node: &Node) -> String {
    let mut out = String::new();
    write_canonical(node, &mut out);
    out
}

fn write_canonical(node: &Node, out: &mut String) {
    match &node.value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => {
            use std::fmt::Write;
            let _ = write!(out, "{n}");
        }
        // Valid rule sets hold no decimal numbers; keep a stable form anyway.
        Value::Float(f) => {
            use std::fmt::Write;
            let _ = write!(out, "{f:?}");
        }
        Value::Str(s) => write_json_string(s, out),
        Value::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            let mut sorted: Vec<(&str, &Node)> = entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or(""), v))
                .collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(key, out);
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal, escaped as serde_json escapes it.
fn write_json_string(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A rule as written, with defaults made explicit and `kind`/`agents` always lists.
fn write_canonical_rule(node: &Node, rule: &Rule, out: &mut String) {
    enum Part<'n> {
        Node(&'n Node),
        Text(String),
    }
    let mut fields: Vec<(&str, Part<'_>)> = node
        .as_map()
        .unwrap_or(&[])
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?, Part::Node(v))))
        .filter(|(k, _)| !matches!(*k, "kind" | "severity" | "hold"))
        .collect();
    let mut kinds = String::from("[");
    for (i, kind) in rule.kinds.iter().enumerate() {
        if i > 0 {
            kinds.push(',');
        }
        write_json_string(kind.name(), &mut kinds);
    }
    kinds.push(']');
    fields.push(("kind", Part::Text(kinds)));
    let mut severity = String::new();
    write_json_string(rule.severity.name(), &mut severity);
    fields.push(("severity", Part::Text(severity)));
    fields.push(("hold", Part::Text(rule.hold.to_string())));
    if let Some((_, part)) = fields.iter_mut().find(|(k, _)| *k == "agents")
        && let Part::Node(n) = part
        && let Value::Str(agent) = &n.value
    {
        let mut list = String::from("[");
        write_json_string(agent, &mut list);
        list.push(']');
        *part = Part::Text(list);
    }
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, part)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(key, out);
        out.push(':');
        match part {
            Part::Node(n) => write_canonical(n, out),
            Part::Text(t) => out.push_str(t),
        }
    }
    out.push('}');
}

fn node_get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    node.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn write_object(entries: impl Iterator<Item = (String, String)>, out: &mut String) {
    out.push('{');
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(&key, out);
        out.push(':');
        out.push_str(&value);
    }
    out.push('}');
}

pub(crate) fn build_set(
    mut rules: Vec<Rule>,
    files: Vec<String>,
    lists: &BTreeMap<&str, String>,
    canonical_rules: &str,
) -> RuleSet {
    let mut doc = String::from("{\"lists\":");
    write_object(
        lists.iter().map(|(k, v)| ((*k).to_owned(), v.clone())),
        &mut doc,
    );
    doc.push_str(",\"oknek_rules\":1,\"rules\":[");
    let mut hasher = Sha256::new();
    hasher.update(doc.as_bytes());
    hasher.update(canonical_rules.as_bytes());
    hasher.update(b"]}");
    let hash = hasher.finalize();
    let digest = format!(
        "sha256:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );

    let mut agent_table: Vec<String> = Vec::new();
    for rule in &mut rules {
        if let Some(agents) = &rule.agents {
            let mut bits = Vec::new();
            for agent in agents {
                let i = match agent_table.iter().position(|a| a == agent) {
                    Some(i) => i,
                    None => {
                        agent_table.push(agent.clone());
                        agent_table.len() - 1
                    }
                };
                if bits.len() <= i / 64 {
                    bits.resize(i / 64 + 1, 0u64);
                }
                bits[i / 64] |= 1 << (i % 64);
            }
            rule.agent_bits = bits;
        }
    }
    let by_kind = Kind::ALL.map(|kind| {
        KindIndex::build(
            rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.kinds.contains(&kind))
                .map(|(i, r)| (i as u32, r.pred.as_ref())),
        )
    });
    RuleSet {
        rules,
        by_kind,
        agent_table,
        files,
        digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped_like_serde_json() {
        for s in [
            "plain",
            "q\"b\\s",
            "\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}",
            "é ∑ 🦀",
            "",
        ] {
            let mut out = String::new();
            write_json_string(s, &mut out);
            assert_eq!(out, serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn ranges_durations_and_networks() {
        assert_eq!(parse_range("1000-1999"), Some((1000, 1999)));
        assert_eq!(parse_range("22"), Some((22, 22)));
        assert_eq!(parse_range("-5"), None);
        assert_eq!(parse_duration("7d"), Some(7 * 86_400));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("3651d"), None);
        assert!(matches!(
            parse_cidr("10.0.0.0/8"),
            Ok(Net::V4(0x0a00_0000, 0xff00_0000))
        ));
        assert!(matches!(
            parse_cidr("::ffff:10.0.0.0/104"),
            Ok(Net::V4(0x0a00_0000, 0xff00_0000))
        ));
        assert!(matches!(parse_cidr("0.0.0.0/0"), Ok(Net::V4(0, 0))));
        assert!(parse_cidr("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(parse_cidr("fe80::1/10").is_err());
        assert!(parse_cidr("1.2.3.4/").is_err());
    }

    #[test]
    fn a_reload_reuses_unchanged_regexes() {
        let text = "oknek_rules: 1\nrules:\n  - { id: a, title: t, kind: exec, match: { argv: { regex: 'x+y' } }, action: warn }\n";
        let first = RuleSet::from_sources(&[("a.yaml", text)]).unwrap();
        let second = RuleSet::from_sources_reusing(&[("a.yaml", text)], &first).unwrap();
        let regex = |set: &RuleSet| {
            let mut out = Vec::new();
            set.rules[0].pred.as_ref().unwrap().regexes(&mut out);
            out[0].as_str().to_owned()
        };
        assert_eq!(regex(&first), regex(&second));
        assert_eq!(first.digest(), second.digest());
    }
}
