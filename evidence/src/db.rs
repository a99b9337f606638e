//! The SQLite side of the store: schema, migrations, meta and row access.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::bundle::Record;
use crate::codec::{hex, unhex};
use crate::error::{Error, Result};
use crate::key::Head;

pub const DB_FILE: &str = "oknek.db";
/// The schema this code writes. Older databases are migrated on open; newer ones are refused.
pub const SCHEMA_VERSION: u32 = 1;

/// `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: the first schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
     CREATE TABLE events (
         seq     INTEGER PRIMARY KEY,
         time_ns INTEGER NOT NULL,
         agent   TEXT,
         rule    TEXT NOT NULL,
         verdict TEXT NOT NULL,
         pid     INTEGER NOT NULL,
         body    TEXT NOT NULL,
         hash    BLOB NOT NULL,
         sig     BLOB NOT NULL
     );
     -- One index: every secondary index costs each insert about a microsecond and ~50 bytes.
     -- Queries by agent, rule, verdict or pid scan the time range (or the table).
     CREATE INDEX events_time ON events(time_ns);
     CREATE TABLE baseline (
         agent   TEXT NOT NULL,
         feature TEXT NOT NULL,
         value   TEXT NOT NULL,
         day     INTEGER NOT NULL,
         count   INTEGER NOT NULL,
         PRIMARY KEY (agent, feature, value, day)
     ) WITHOUT ROWID;
     CREATE INDEX baseline_day ON baseline(day);
     CREATE TABLE baseline_agents (
         agent     TEXT PRIMARY KEY,
         first_ns  INTEGER NOT NULL,
         last_ns   INTEGER NOT NULL,
         evictions INTEGER NOT NULL DEFAULT 0
     ) WITHOUT ROWID;",
];

pub(crate) const INSERT_EVENT: &str = "INSERT INTO events (seq, time_ns, agent, rule, verdict, \
     pid, body, hash, sig) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

pub(crate) fn open_rw(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::db(path, e))?;
    let setup = || -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode stays {mode}: the file system does not support WAL"
            )));
        }
        // Checkpoints run on the syncer thread; this is only the fallback if it falls behind
        // (16384 pages, 64 MiB of WAL).
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; PRAGMA wal_autocheckpoint=16384;",
        )
    };
    setup().map_err(|e| Error::db(path, e))?;
    migrate(&conn, path)?;
    Ok(conn)
}

pub(crate) fn open_ro(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::store(path, "no such database"));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::db(path, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| Error::db(path, e))?;
    let version = schema_version(&conn, path)?;
    if version != SCHEMA_VERSION {
        if version > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                path: path.to_owned(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        return Err(Error::store(
            path,
            format!(
                "schema version {version} is older than {SCHEMA_VERSION}; open the store once \
                 with the writer (oknekd) to migrate it"
            ),
        ));
    }
    Ok(conn)
}

fn schema_version(conn: &Connection, path: &Path) -> Result<u32> {
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )
        .map_err(|e| Error::db(path, e))?;
    if !has_meta {
        return Ok(0);
    }
    match meta_get(conn, "schema_version").map_err(|e| Error::db(path, e))? {
        None => Err(Error::store(path, "meta table has no schema_version")),
        Some(v) => v
            .parse()
            .map_err(|_| Error::store(path, format!("bad schema_version {v:?} in meta"))),
    }
}

fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let version = schema_version(conn, path)?;
    if version > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let run = || -> rusqlite::Result<()> {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            meta_set(&tx, "schema_version", &(from + 1).to_string())?;
            tx.commit()
        };
        run().map_err(|e| Error::db(path, e))?;
    }
    Ok(())
}

pub(crate) fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub(crate) fn meta_set(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute([key, value])
        .map(drop)
}

/// The signed head in meta: `Ok(None)` when there is none, `Err(reason)` when it is malformed.
pub(crate) fn read_head(conn: &Connection) -> rusqlite::Result<Result<Option<Head>, String>> {
    let (seq, hash, sig) = (
        meta_get(conn, "head_seq")?,
        meta_get(conn, "head_hash")?,
        meta_get(conn, "head_sig")?,
    );
    Ok(match (seq, hash, sig) {
        (None, None, None) => Ok(None),
        (Some(seq), Some(hash), Some(sig)) => {
            match (seq.parse(), unhex(hash.as_bytes()), unhex(sig.as_bytes())) {
                (Ok(seq), Some(hash), Some(sig)) => Ok(Some(Head { seq, hash, sig })),
                _ => Err("the signed head in meta is malformed".into()),
            }
        }
        _ => Err("the signed head in meta is incomplete".into()),
    })
}

pub(crate) fn write_head(conn: &Connection, head: &Head) -> rusqlite::Result<()> {
    meta_set(conn, "head_seq", &head.seq.to_string())?;
    meta_set(conn, "head_hash", &hex(&head.hash))?;
    meta_set(conn, "head_sig", &hex(&head.sig))
}

pub(crate) fn insert_record(conn: &Connection, r: &Record) -> rusqlite::Result<()> {
    conn.prepare_cached(INSERT_EVENT)?
        .execute(params![
            r.seq as i64,
            r.time_ns,
            r.agent,
            r.rule,
            r.verdict,
            r.pid,
            r.body,
            &r.hash[..],
            &r.sig[..],
        ])
        .map(drop)
}

/// Reads a row; columns that do not have the stored types come back as a [`RowError`].
pub(crate) fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record, String>> {
    let seq: i64 = row.get(0)?;
    let hash: Vec<u8> = match row.get(7) {
        Ok(h) => h,
        Err(_) => return Ok(Err(format!("row {seq}: hash is not a blob"))),
    };
    let sig: Vec<u8> = match row.get(8) {
        Ok(s) => s,
        Err(_) => return Ok(Err(format!("row {seq}: sig is not a blob"))),
    };
    let (Ok(hash), Ok(sig)) = (<[u8; 32]>::try_from(hash), <[u8; 64]>::try_from(sig)) else {
        return Ok(Err(format!("row {seq}: hash or sig has the wrong length")));
    };
    let get = || -> rusqlite::Result<Record> {
        Ok(Record {
            seq: seq as u64,
            time_ns: row.get(1)?,
            agent: row.get(2)?,
            rule: row.get(3)?,
            verdict: row.get(4)?,
            pid: row.get(5)?,
            body: row.get(6)?,
            hash,
            sig,
        })
    };
    Ok(get().map_err(|e| format!("row {seq}: {e}")))
}

pub(crate) const SELECT_EVENTS: &str =
    "SELECT seq, time_ns, agent, rule, verdict, pid, body, hash, sig FROM events";

pub(crate) fn record_by_seq(conn: &Connection, seq: u64) -> rusqlite::Result<Option<Record>> {
    conn.query_row(
        &format!("{SELECT_EVENTS} WHERE seq = ?1"),
        [seq as i64],
        row_to_record,
    )
    .optional()
    .map(|o| o.and_then(Result::ok))
}

pub(crate) fn last_seq(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    conn.query_row("SELECT max(seq) FROM events", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .map(|o| o.map(|s| s as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_and_refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let conn = open_rw(&path).unwrap();
        assert_eq!(schema_version(&conn, &path).unwrap(), SCHEMA_VERSION);
        drop(conn);
        // Opening again is a no-op migration.
        let conn = open_rw(&path).unwrap();
        meta_set(&conn, "schema_version", "99").unwrap();
        drop(conn);
        assert!(matches!(
            open_rw(&path),
            Err(Error::SchemaTooNew { found: 99, .. })
        ));
        assert!(matches!(
            open_ro(&path),
            Err(Error::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn garbage_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        std::fs::write(&path, vec![0x55u8; 8192]).unwrap();
        assert!(open_rw(&path).is_err());
        assert!(open_ro(&path).is_err());
    }
}
