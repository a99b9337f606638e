//! Reading bundles back for `oknek events`.

use std::path::{Path, PathBuf};

use oknek_event::{Timestamp, Verdict};
use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;
use serde_json::Value;

use crate::bundle::Record;
use crate::db::{self, DB_FILE};
use crate::error::{Error, Result};

/// Filters for [`EventReader::query`]; all given filters must hold.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Event time at or after.
    pub since: Option<Timestamp>,
    /// Event time before.
    pub until: Option<Timestamp>,
    pub agent: Option<String>,
    pub rule: Option<String>,
    pub verdict: Option<Verdict>,
    pub pid: Option<u32>,
    /// Only bundles with a greater seq (for following).
    pub after_seq: Option<u64>,
    /// Only the newest `limit` matches (still returned oldest first).
    pub limit: Option<usize>,
}

/// A read-only view of a store's database.
pub struct EventReader {
    conn: Connection,
    path: PathBuf,
}

impl EventReader {
    pub fn open(state_dir: &Path) -> Result<EventReader> {
        let path = state_dir.join(DB_FILE);
        Ok(EventReader {
            conn: db::open_ro(&path)?,
            path,
        })
    }

    /// Matching bundles, oldest first.
    pub fn query(&self, q: &Query) -> Result<Vec<Record>> {
        let mut sql = format!("{} WHERE 1=1", db::SELECT_EVENTS);
        let mut args: Vec<SqlValue> = Vec::new();
        let mut add = |clause: &str, v: SqlValue| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(t) = q.since {
            add("time_ns >=", SqlValue::Integer(t.as_nanos()));
        }
        if let Some(t) = q.until {
            add("time_ns <", SqlValue::Integer(t.as_nanos()));
        }
        if let Some(a) = &q.agent {
            add("agent =", SqlValue::Text(a.clone()));
        }
        if let Some(r) = &q.rule {
            add("rule =", SqlValue::Text(r.clone()));
        }
        if let Some(v) = q.verdict {
            add("verdict =", SqlValue::Text(v.name().to_owned()));
        }
        if let Some(p) = q.pid {
            add("pid =", SqlValue::Integer(p.into()));
        }
        if let Some(s) = q.after_seq {
            add("seq >", SqlValue::Integer(s as i64));
        }
        match q.limit {
            Some(n) => sql.push_str(&format!(" ORDER BY seq DESC LIMIT {n}")),
            None => sql.push_str(" ORDER BY seq"),
        }
        let dbe = |e| Error::db(&self.path, e);
        let mut stmt = self.conn.prepare(&sql).map_err(dbe)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), db::row_to_record)
            .map_err(dbe)?;
        let mut out = Vec::new();
        for row in rows {
            // Unreadable rows are skipped here; `oknek verify` names them.
            if let Ok(r) = row.map_err(dbe)? {
                out.push(r);
            }
        }
        if q.limit.is_some() {
            out.reverse();
        }
        Ok(out)
    }

    pub fn last_seq(&self) -> Result<u64> {
        db::last_seq(&self.conn)
            .map(|s| s.unwrap_or(0))
            .map_err(|e| Error::db(&self.path, e))
    }
}

/// A one-line description of a bundle for people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub kind: String,
    /// The object of the action: a path, an address, a model.
    pub what: String,
    pub title: Option<String>,
    pub mechanism: String,
}

impl Summary {
    pub fn of(record: &Record) -> Summary {
        let Ok(v) = serde_json::from_str::<Value>(&record.body) else {
            return Summary::default();
        };
        let s = |v: &Value| v.as_str().map(str::to_owned);
        let cap = &v["capture"];
        let what = if let Some(argv) = cap["argv"].as_array() {
            argv.iter()
                .map(|a| a.as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(" ")
        } else if let Some(p) = s(&cap["path"]) {
            p
        } else if let (Some(p), Some(m)) = (s(&cap["provider"]), s(&cap["model"])) {
            format!("{p}/{m}")
        } else if let Some(p) = s(&cap["provider"]) {
            p
        } else if let Some(a) = s(&cap["addr"]) {
            match cap["port"].as_u64() {
                Some(port) if a.contains(':') => format!("[{a}]:{port}"),
                Some(port) => format!("{a}:{port}"),
                None => a,
            }
        } else if let Some(u) = s(&cap["unix_path"]) {
            format!("unix:{u}")
        } else {
            s(&v["process"]["exe"]).unwrap_or_default()
        };
        Summary {
            kind: s(&v["kind"]).unwrap_or_default(),
            what,
            title: s(&v["title"]),
            mechanism: s(&v["mechanism"]).unwrap_or_default(),
        }
    }
}
