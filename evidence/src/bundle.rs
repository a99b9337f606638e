//! Bundles: what a rule fire becomes, its canonical bytes, hash, signature and journal line.
//!
//! A journal line is the canonical JSON object `{"bundle":BODY,"hash":HEX,"sig":HEX}`:
//! - BODY is the canonical encoding (see [`crate::codec`]) of the bundle's fields;
//! - hash = SHA-256(`"oknek-bundle-v1\0"` ‖ BODY), 64 lowercase hex digits;
//! - sig = Ed25519 (RFC 8032) over the 32 raw hash bytes, 128 lowercase hex digits.
//!
//! After each committed batch the journal also gets a signed-head line
//! `{"head":{"hash":HEX,"seq":N,"sig":HEX}}` (see [`crate::key::Head`]).

use std::borrow::Cow;

use oknek_event::{Event, Field, FieldValue, Timestamp, Verdict};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::codec::{self, ObjectWriter, push_hex, unhex, write_str, write_u64};
use crate::key::Head;

/// Domain tag hashed before the body.
pub const BUNDLE_TAG: &[u8] = b"oknek-bundle-v1\0";
/// The `v` field of every bundle this code writes.
pub const FORMAT_VERSION: u64 = 1;
/// `prev` of the first bundle: 32 zero bytes.
pub const GENESIS: [u8; 32] = [0; 32];

const LINE_PREFIX: &str = "{\"bundle\":";
const HASH_INFIX: &str = ",\"hash\":\"";
const SIG_INFIX: &str = "\",\"sig\":\"";
const LINE_END: &str = "\"}";
/// Length of everything after BODY in a bundle line.
const SUFFIX_LEN: usize = HASH_INFIX.len() + 64 + SIG_INFIX.len() + 128 + LINE_END.len();

/// One rule fire: the input of [`crate::Store::append`].
#[derive(Debug, Clone, Copy)]
pub struct Firing<'a> {
    pub event: &'a Event,
    pub rule_id: &'a str,
    pub rule_title: Option<&'a str>,
    pub verdict: Verdict,
    /// `sha256:…` of the rule set that made the decision.
    pub rule_set_digest: &'a str,
    /// The fields the rule's `evidence.capture` asks for.
    pub capture: &'a [Field],
    /// Anything else worth keeping (policy result, quota state). Non-integer numbers are
    /// recorded as strings.
    pub extra: Option<&'a Map<String, Value>>,
}

/// A signed bundle as stored: the canonical body and the columns derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub hash: [u8; 32],
    pub sig: [u8; 64],
    /// Canonical JSON of the bundle's fields: exactly the bytes that were hashed.
    pub body: String,
    pub time_ns: i64,
    pub agent: Option<String>,
    pub rule: String,
    pub verdict: String,
    pub pid: u32,
}

impl Record {
    /// The journal line, without the newline.
    pub fn line(&self) -> String {
        let mut s = String::with_capacity(self.body.len() + LINE_PREFIX.len() + SUFFIX_LEN);
        self.push_line(&mut s);
        s
    }

    pub fn push_line(&self, s: &mut String) {
        s.push_str(LINE_PREFIX);
        s.push_str(&self.body);
        s.push_str(HASH_INFIX);
        push_hex(s, &self.hash);
        s.push_str(SIG_INFIX);
        push_hex(s, &self.sig);
        s.push_str(LINE_END);
    }
}

pub fn head_line(head: &Head) -> String {
    let mut s = String::with_capacity(240);
    s.push_str("{\"head\":{\"hash\":\"");
    push_hex(&mut s, &head.hash);
    s.push_str("\",\"seq\":");
    s.push_str(&head.seq.to_string());
    s.push_str(",\"sig\":\"");
    push_hex(&mut s, &head.sig);
    s.push_str("\"}}");
    s
}

pub fn bundle_hash(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(BUNDLE_TAG);
    h.update(body);
    h.finalize().into()
}

/// What every bundle of one writer shares.
pub(crate) struct Context {
    pub host: String,
    pub install: String,
    pub key_id: String,
}

/// Writes the canonical body of a bundle. Keys are in byte order (checked in debug builds).
pub(crate) fn encode_body(
    ctx: &Context,
    seq: u64,
    prev: &[u8; 32],
    recorded: Timestamp,
    f: &Firing<'_>,
    out: &mut Vec<u8>,
) {
    let ev = f.event;
    let p = &ev.process;
    let mut o = ObjectWriter::new(out);
    if let Some(agent) = &p.agent {
        o.str("agent", agent);
    }
    write_capture(o.key("capture"), ev, f.capture);
    if let Some(extra) = f.extra.filter(|m| !m.is_empty()) {
        codec::write_value(o.key("extra"), &Value::Object(extra.clone()));
    }
    o.str("host", &ctx.host);
    o.str("install", &ctx.install);
    o.str("key", &ctx.key_id);
    o.str("kind", ev.kind().name());
    o.str("mechanism", ev.source.name());
    let mut prev_hex = String::with_capacity(64);
    push_hex(&mut prev_hex, prev);
    o.str("prev", &prev_hex);
    {
        let mut po = ObjectWriter::new(o.key("process"));
        if let Some(cg) = &p.cgroup {
            po.str("cgroup", cg);
        }
        po.u64("cgroup_id", p.cgroup_id);
        po.str("comm", &p.comm);
        po.str("exe", &p.exe);
        if let Some(sha) = &p.exe_sha256 {
            po.str("exe_sha256", sha);
        }
        po.u64("gid", p.gid.into());
        if !p.namespaces.is_unknown() {
            let ns = &p.namespaces;
            let mut no = ObjectWriter::new(po.key("ns"));
            no.u64("cgroup", ns.cgroup);
            no.u64("ipc", ns.ipc);
            no.u64("mnt", ns.mnt);
            no.u64("net", ns.net);
            no.u64("pid", ns.pid);
            no.u64("user", ns.user);
            no.u64("uts", ns.uts);
            no.finish();
        }
        if let Some(c) = &p.parent_comm {
            po.str("parent_comm", c);
        }
        if let Some(e) = &p.parent_exe {
            po.str("parent_exe", e);
        }
        po.u64("pid", p.pid.into());
        po.u64("ppid", p.ppid.into());
        po.u64("tgid", p.tgid.into());
        po.u64("uid", p.uid.into());
        if let Some(u) = &p.unit {
            po.str("unit", u);
        }
        po.finish();
    }
    o.str("recorded", &recorded.to_string());
    o.str("rule", f.rule_id);
    o.str("rules_digest", f.rule_set_digest);
    o.u64("seq", seq);
    o.str("time", &ev.time.to_string());
    if let Some(t) = f.rule_title {
        o.str("title", t);
    }
    o.u64("v", FORMAT_VERSION);
    o.str("verdict", f.verdict.name());
    o.finish();
}

fn write_capture(out: &mut Vec<u8>, ev: &Event, capture: &[Field]) {
    let mut fields: Vec<Field> = capture.to_vec();
    fields.sort_unstable_by_key(|f| f.name());
    fields.dedup();
    let mut o = ObjectWriter::new(out);
    for f in fields {
        let Some(v) = ev.field(f) else { continue };
        let out = o.key(f.name());
        match v {
            FieldValue::Str(s) => write_str(out, s),
            FieldValue::Uint(n) => write_u64(out, n),
            FieldValue::Ip(ip) => write_str(out, &ip.to_string()),
            FieldValue::List(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(out, item);
                }
                out.push(b']');
            }
        }
    }
    o.finish();
}

/// A journal line split into its parts, before any check.
#[derive(Debug)]
pub enum JournalLine<'a> {
    Bundle {
        body: Cow<'a, str>,
        hash: [u8; 32],
        sig: [u8; 64],
    },
    Head(Head),
}

/// Splits a journal line (without newline). Lines in the writer's exact layout take a fast
/// path; any other valid JSON of the same shape is accepted and re-encoded canonically.
pub fn split_line(line: &str) -> Result<JournalLine<'_>, String> {
    if line.len() > LINE_PREFIX.len() + SUFFIX_LEN && line.starts_with(LINE_PREFIX) {
        let suffix_at = line.len() - SUFFIX_LEN;
        if line.is_char_boundary(suffix_at) {
            let (body, suffix) = line[LINE_PREFIX.len()..].split_at(suffix_at - LINE_PREFIX.len());
            let s = suffix.as_bytes();
            let h_at = HASH_INFIX.len();
            let s_at = h_at + 64 + SIG_INFIX.len();
            if suffix.starts_with(HASH_INFIX)
                && &s[h_at + 64..s_at] == SIG_INFIX.as_bytes()
                && suffix.ends_with(LINE_END)
                && let (Some(hash), Some(sig)) =
                    (unhex(&s[h_at..h_at + 64]), unhex(&s[s_at..s_at + 128]))
            {
                return Ok(JournalLine::Bundle {
                    body: Cow::Borrowed(body),
                    hash,
                    sig,
                });
            }
        }
    }
    split_line_slow(line)
}

fn split_line_slow(line: &str) -> Result<JournalLine<'static>, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut map) = v else {
        return Err("not a JSON object".into());
    };
    let hexfield = |m: &Map<String, Value>, k: &str| -> Result<Vec<u8>, String> {
        m.get(k)
            .and_then(Value::as_str)
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| format!("no {k:?} string"))
    };
    if map.len() == 1
        && let Some(Value::Object(head)) = map.get("head")
    {
        let hash = unhex(&hexfield(head, "hash")?).ok_or("head hash is not 64 hex digits")?;
        let sig = unhex(&hexfield(head, "sig")?).ok_or("head sig is not 128 hex digits")?;
        let seq = head
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or("head has no seq")?;
        if head.len() != 3 {
            return Err("head has unexpected members".into());
        }
        return Ok(JournalLine::Head(Head { seq, hash, sig }));
    }
    if map.len() != 3 {
        return Err("expected exactly the members bundle, hash and sig".into());
    }
    let hash = unhex(&hexfield(&map, "hash")?).ok_or("hash is not 64 lowercase hex digits")?;
    let sig = unhex(&hexfield(&map, "sig")?).ok_or("sig is not 128 lowercase hex digits")?;
    let bundle = map.remove("bundle").ok_or("no bundle member")?;
    if !bundle.is_object() {
        return Err("bundle is not an object".into());
    }
    let body = String::from_utf8(codec::to_canonical(&bundle)).map_err(|e| e.to_string())?;
    Ok(JournalLine::Bundle {
        body: Cow::Owned(body),
        hash,
        sig,
    })
}

/// The fields of a body that verification and indexing need.
#[derive(Debug, Deserialize)]
pub struct BodyView<'a> {
    #[serde(default)]
    pub agent: Option<String>,
    pub key: &'a str,
    pub prev: &'a str,
    pub process: ProcessView,
    #[serde(borrow)]
    pub rule: Cow<'a, str>,
    pub seq: u64,
    pub time: &'a str,
    pub v: u64,
    pub verdict: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct ProcessView {
    pub pid: u32,
}

impl<'a> BodyView<'a> {
    pub fn parse(body: &'a str) -> Result<BodyView<'a>, String> {
        let v: BodyView<'a> = serde_json::from_str(body).map_err(|e| e.to_string())?;
        if v.v != FORMAT_VERSION {
            return Err(format!("unknown bundle format version {}", v.v));
        }
        Ok(v)
    }

    pub fn prev_hash(&self) -> Option<[u8; 32]> {
        unhex(self.prev.as_bytes())
    }

    pub fn time_ns(&self) -> Option<i64> {
        self.time.parse::<Timestamp>().ok().map(Timestamp::as_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oknek_event::{Action, Mechanism, Namespaces, Process};

    pub(crate) fn sample_event() -> Event {
        Event {
            time: "2026-11-22T08:30:00Z".parse().unwrap(),
            source: Mechanism::Fanotify,
            process: Process {
                pid: 4242,
                tgid: 4242,
                ppid: 4200,
                uid: 1000,
                gid: 1000,
                exe: "/usr/bin/cat".into(),
                comm: "cat".into(),
                agent: Some("claude-code".into()),
                cgroup: Some("/system.slice/a.service".into()),
                cgroup_id: 77,
                namespaces: Namespaces {
                    mnt: 4026531841,
                    pid: 4026531836,
                    ..Namespaces::default()
                },
                parent_exe: Some("/usr/bin/bash".into()),
                ..Process::default()
            },
            action: Action::Exec {
                path: "/usr/bin/cat".into(),
                argv: vec![
                    "cat".into(),
                    "/home/dev/.ssh/id_ed25519".into(),
                    "\"q\"\n".into(),
                ],
            },
        }
    }

    #[test]
    fn body_is_canonical_and_line_splits() {
        let ev = sample_event();
        let mut extra = Map::new();
        extra.insert("quota".into(), serde_json::json!({"left": 0, "rate": 0.5}));
        let firing = Firing {
            event: &ev,
            rule_id: "R1.ssh",
            rule_title: Some("Agent reads an SSH key"),
            verdict: Verdict::Block,
            rule_set_digest: "sha256:00",
            capture: &[Field::Path, Field::Argv, Field::Pid, Field::Model],
            extra: Some(&extra),
        };
        let ctx = Context {
            host: "h".into(),
            install: "i".into(),
            key_id: "k".into(),
        };
        let mut body = Vec::new();
        encode_body(&ctx, 3, &[1; 32], Timestamp(5), &firing, &mut body);
        let body = String::from_utf8(body).unwrap();
        // Re-encoding the parsed body gives the same bytes: the writer is canonical.
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(codec::to_canonical(&parsed), body.as_bytes());
        assert_eq!(parsed["capture"]["pid"], 4242);
        assert_eq!(parsed["extra"]["quota"]["rate"], "0.5");
        assert!(parsed["capture"].get("model").is_none());
        let view = BodyView::parse(&body).unwrap();
        assert_eq!(
            (view.seq, view.process.pid, view.verdict),
            (3, 4242, "block")
        );

        let rec = Record {
            seq: 3,
            hash: bundle_hash(body.as_bytes()),
            sig: [9; 64],
            body: body.clone(),
            time_ns: 0,
            agent: None,
            rule: String::new(),
            verdict: String::new(),
            pid: 0,
        };
        let line = rec.line();
        let full: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            codec::to_canonical(&full),
            line.as_bytes(),
            "the line is canonical too"
        );
        match split_line(&line).unwrap() {
            JournalLine::Bundle { body: b, hash, sig } => {
                assert!(matches!(b, Cow::Borrowed(_)));
                assert_eq!((b.as_ref(), hash, sig), (body.as_str(), rec.hash, rec.sig));
            }
            other => panic!("{other:?}"),
        }
        // A pretty-printed line takes the slow path and yields the same body.
        let pretty = serde_json::to_string_pretty(&full)
            .unwrap()
            .replace('\n', "");
        match split_line(&pretty).unwrap() {
            JournalLine::Bundle { body: b, .. } => assert_eq!(b, body),
            other => panic!("{other:?}"),
        }
        let head = Head {
            seq: 3,
            hash: rec.hash,
            sig: [1; 64],
        };
        match split_line(&head_line(&head)).unwrap() {
            JournalLine::Head(h) => assert_eq!(h, head),
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "{",
            "[]",
            "{\"bundle\":1,\"hash\":\"\",\"sig\":\"\"}",
            &line[..line.len() - 1],
        ] {
            assert!(split_line(bad).is_err(), "{bad}");
        }
    }
}
