//! The writer: one per state directory, driven from the daemon's single event loop.
//!
//! ```text
//! append(firing)      sign now, queue                      (no I/O)
//! flush_due(now)      commit when the batch is full or `batch_delay` old
//! next_deadline()     when flush_due must run next         (the poll timeout)
//! observe(event)      count the event in the baseline      (no I/O)
//! roll_up(now)        write baseline counts, drop old days (a timer, e.g. once a minute)
//! close()             commit everything
//! ```
//!
//! A commit ("batch") is, in this order: the batch's lines are appended to the journal with one
//! write; the journal is fdatasync'ed if [`JournalSync`] says so; one SQLite transaction inserts
//! the rows and replaces the signed head in `meta`; after the commit a signed-head line is
//! appended to the journal. A process crash (SIGKILL) loses nothing that was committed — both
//! writes are in the page cache — and can leave the journal ahead of the database by at most one
//! batch, possibly with a torn last line. [`Store::open`] repairs exactly that: it imports valid
//! journal records that the database lacks, moves a torn last line aside, and appends database
//! records the journal lacks (what a power loss can leave behind when the journal was not synced
//! as recently as the database).

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oknek_event::{BaselineView, Event, Feature, Timestamp};
use rusqlite::Connection;

use crate::baseline::{Baseline, BaselineConfig};
use crate::bundle::{
    BodyView, Context, Firing, GENESIS, JournalLine, Record, bundle_hash, encode_body, head_line,
    split_line,
};
use crate::db::{self, DB_FILE};
use crate::error::{Error, Result};
use crate::journal::{self, JOURNAL_DIR, JournalReader, JournalWriter};
use crate::key::{Head, HostKey, KEY_FILE};
use crate::syncer::Syncer;
use crate::sys;

/// How a [`Store`] is opened. Start from [`StoreConfig::new`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub state_dir: PathBuf,
    /// Default: `<state_dir>/journal`.
    pub journal_dir: Option<PathBuf>,
    /// A batch commits when it holds this many bundles…
    pub batch_max: usize,
    /// …or when its oldest bundle has waited this long.
    pub batch_delay: Duration,
    /// A new journal file is started (at a batch boundary) once the current one is this big.
    pub rotate_bytes: u64,
    /// When the journal is fdatasync'ed (before a database commit).
    pub journal_sync: JournalSync,
    /// Create the host key if there is none (the daemon's first start).
    pub create_key: bool,
    /// Bundles kept in memory while commits fail (disk full); beyond it `append` refuses.
    pub max_pending: usize,
    pub baseline: BaselineConfig,
    /// The `host` field of bundles; default: the kernel's host name.
    pub host: Option<String>,
}

impl StoreConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            state_dir: state_dir.into(),
            journal_dir: None,
            batch_max: 256,
            batch_delay: Duration::from_millis(2),
            rotate_bytes: 64 << 20,
            journal_sync: JournalSync::Interval(Duration::from_secs(1)),
            create_key: false,
            max_pending: 100_000,
            baseline: BaselineConfig::default(),
            host: None,
        }
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.journal_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join(JOURNAL_DIR))
    }
}

/// The journal's fsync policy. The database runs with `synchronous=NORMAL` (its WAL is synced
/// at checkpoints, every 250 ms on the syncer thread), so by default neither file is synced in
/// the commit path: a process crash loses nothing committed, a power loss about the last
/// interval, and whichever file kept more is copied into the other on the next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalSync {
    /// Before every database commit: the journal then never lags the database, even after a
    /// power loss, at one fdatasync per batch.
    EveryBatch,
    /// On the syncer thread, this often (and when the store closes).
    Interval(Duration),
}

/// A queued bundle's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// What one commit made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub first_seq: u64,
    pub last_seq: u64,
}

/// What [`Store::open`] had to repair; empty after a clean shutdown.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Journal records the database lacked (an interrupted batch), now committed.
    pub imported: u64,
    /// Database records the journal lacked, now re-appended to it.
    pub restored: u64,
    /// A partial last journal line, moved to this file.
    pub torn: Option<PathBuf>,
    /// Everything else worth a log line.
    pub notes: Vec<String>,
}

impl Recovery {
    pub fn is_empty(&self) -> bool {
        self.imported == 0 && self.restored == 0 && self.torn.is_none() && self.notes.is_empty()
    }
}

pub struct Store {
    cfg: StoreConfig,
    db_path: PathBuf,
    journal_dir: PathBuf,
    conn: Connection,
    key: HostKey,
    ctx: Context,
    journal: JournalWriter,
    next_seq: u64,
    prev_hash: [u8; 32],
    pending: Vec<Record>,
    pending_since: Option<Instant>,
    head: Option<Head>,
    baseline: Baseline,
    recovery: Recovery,
    last_error: Option<String>,
    syncer: Syncer,
    body_buf: Vec<u8>,
    line_buf: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("state_dir", &self.cfg.state_dir)
            .field("next_seq", &self.next_seq)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `cfg.state_dir`, repairing what a crash left.
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        let state_dir = cfg.state_dir.clone();
        sys::ensure_private_dir(&state_dir)?;
        let journal_dir = cfg.journal_dir();
        sys::ensure_private_dir(&journal_dir)?;
        let key_path = state_dir.join(KEY_FILE);
        let key = if cfg.create_key {
            HostKey::load_or_generate(&key_path)?.0
        } else {
            HostKey::load(&key_path)?
        };
        let db_path = state_dir.join(DB_FILE);
        let conn = db::open_rw(&db_path)?;
        bind_meta(&conn, &db_path, &key, cfg.host.as_deref())?;
        let host = match &cfg.host {
            Some(h) => h.clone(),
            None => sys::hostname(),
        };
        let ctx = Context {
            host,
            install: key.install_id().to_owned(),
            key_id: key.public().key_id(),
        };
        let baseline =
            Baseline::load(cfg.baseline.clone(), &conn).map_err(|e| Error::db(&db_path, e))?;
        let mut rec = Reconciler {
            db_path: &db_path,
            journal_dir: &journal_dir,
            conn: &conn,
            key: &key,
            recovery: Recovery::default(),
        };
        let Reconciled { journal, tip, head } = rec.run()?;
        let recovery = rec.recovery;
        let syncer = match cfg.journal_sync {
            JournalSync::EveryBatch => Syncer::spawn(&db_path, None, None),
            JournalSync::Interval(d) => Syncer::spawn(&db_path, journal.file_clone(), Some(d)),
        };
        Ok(Store {
            cfg,
            db_path,
            journal_dir,
            conn,
            ctx,
            journal,
            next_seq: tip.0.saturating_add(1),
            prev_hash: tip.1,
            pending: Vec::new(),
            pending_since: None,
            head,
            baseline,
            recovery,
            last_error: None,
            syncer,
            key,
            body_buf: Vec::with_capacity(2048),
            line_buf: String::new(),
        })
    }

    pub fn key(&self) -> &HostKey {
        &self.key
    }

    pub fn state_dir(&self) -> &Path {
        &self.cfg.state_dir
    }

    pub fn journal_dir(&self) -> &Path {
        &self.journal_dir
    }

    /// What opening the store repaired (log it).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The last committed signed head.
    pub fn head(&self) -> Option<Head> {
        self.head
    }

    /// Bundles signed but not yet committed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Signs a bundle for `firing` and queues it for the next commit. Does no I/O.
    pub fn append(&mut self, firing: &Firing<'_>) -> Result<Appended> {
        if self.pending.len() >= self.cfg.max_pending {
            return Err(Error::Backlog {
                pending: self.pending.len(),
                last_error: self.last_error.clone().unwrap_or_else(|| "none".to_owned()),
            });
        }
        let seq = self.next_seq;
        let mut body = std::mem::take(&mut self.body_buf);
        body.clear();
        encode_body(
            &self.ctx,
            seq,
            &self.prev_hash,
            Timestamp::now(),
            firing,
            &mut body,
        );
        let hash = bundle_hash(&body);
        let body = String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        let ev = firing.event;
        self.pending.push(Record {
            seq,
            hash,
            sig: self.key.sign_hash(&hash),
            body,
            time_ns: ev.time.as_nanos(),
            agent: ev.process.agent.clone(),
            rule: firing.rule_id.to_owned(),
            verdict: firing.verdict.name().to_owned(),
            pid: ev.process.pid,
        });
        self.pending_since.get_or_insert_with(Instant::now);
        self.next_seq += 1;
        self.prev_hash = hash;
        Ok(Appended { seq, hash })
    }

    /// Counts an observed event in the baseline (every event, not only rule fires).
    pub fn observe(&mut self, event: &Event) {
        self.baseline.record(event);
    }

    pub fn baseline(&self) -> &Baseline {
        &self.baseline
    }

    /// When the open batch must be committed; `None` when nothing is queued.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + self.cfg.batch_delay)
    }

    /// Commits the queued bundles if the batch is full or old enough. Call it after handling
    /// events and when the poll timeout from [`Self::next_deadline`] expires.
    pub fn flush_due(&mut self, now: Instant) -> Result<Option<Committed>> {
        let due = self.pending.len() >= self.cfg.batch_max
            || self.next_deadline().is_some_and(|d| d <= now);
        if due { self.flush() } else { Ok(None) }
    }

    /// Commits every queued bundle now. On error the bundles stay queued for the next try.
    pub fn flush(&mut self) -> Result<Option<Committed>> {
        let res = self.commit();
        if let Err(e) = &res {
            self.last_error = Some(e.to_string());
        }
        res
    }

    fn commit(&mut self) -> Result<Option<Committed>> {
        let (Some(first), Some(last)) = (self.pending.first(), self.pending.last()) else {
            return Ok(None);
        };
        let (first_seq, last_seq, last_hash) = (first.seq, last.seq, last.hash);
        if self.journal.len() >= self.cfg.rotate_bytes {
            self.journal.rotate(first_seq)?;
            if let JournalSync::Interval(_) = self.cfg.journal_sync {
                self.syncer.set_journal(self.journal.file_clone());
            }
        }
        let mut lines = std::mem::take(&mut self.line_buf);
        lines.clear();
        for r in &self.pending {
            r.push_line(&mut lines);
            lines.push('\n');
        }
        let before = self.journal.len();
        let res = self.write_batch(&lines, before, last_seq, &last_hash);
        self.line_buf = lines;
        let head = res?;
        // The head line only tells verify that the batch was committed; losing it is harmless.
        let mut marker = head_line(&head);
        marker.push('\n');
        if let Err(e) = self.journal.append(marker.as_bytes()) {
            self.last_error = Some(e.to_string());
        }
        self.head = Some(head);
        self.pending.clear();
        self.pending_since = None;
        Ok(Some(Committed {
            first_seq,
            last_seq,
        }))
    }

    fn write_batch(
        &mut self,
        lines: &str,
        before: u64,
        last_seq: u64,
        last_hash: &[u8; 32],
    ) -> Result<Head> {
        self.journal.append(lines.as_bytes())?;
        let undo = |s: &mut Store, e: Error| {
            let _ = s.journal.truncate(before);
            e
        };
        if self.cfg.journal_sync == JournalSync::EveryBatch
            && let Err(e) = self.journal.sync()
        {
            return Err(undo(self, e));
        }
        let head = self.key.sign_head(last_seq, last_hash);
        let tx = || -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            for r in &self.pending {
                db::insert_record(&tx, r)?;
            }
            db::write_head(&tx, &head)?;
            tx.commit()
        };
        if let Err(e) = tx() {
            let e = Error::db(&self.db_path, e);
            return Err(undo(self, e));
        }
        Ok(head)
    }

    /// The baseline timer: moves the window to `now` (dropping days older than 14) and writes
    /// changed counts.
    pub fn roll_up(&mut self, now: Timestamp) -> Result<()> {
        self.persist_baseline(Some(now))
    }

    fn persist_baseline(&mut self, now: Option<Timestamp>) -> Result<()> {
        let (conn, baseline) = (&self.conn, &mut self.baseline);
        let mut run = || -> rusqlite::Result<()> {
            let tx = conn.unchecked_transaction()?;
            baseline.persist(&tx, now)?;
            tx.commit()
        };
        run().map_err(|e| Error::db(&self.db_path, e))
    }

    /// Commits everything and writes the baseline. The store is consumed either way; on error
    /// the uncommitted bundles are lost (the error says so).
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        self.persist_baseline(None)?;
        self.syncer.stop();
        self.journal.sync()
    }

    /// An error of the background syncer (fdatasync or checkpoint failed) since the last call.
    pub fn background_error(&self) -> Option<String> {
        self.syncer.take_error()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort for a caller that did not close: errors have nowhere to go here.
        let _ = self.flush();
        let _ = self.persist_baseline(None);
    }
}

impl BaselineView for Store {
    fn history_since(&self, agent: &str) -> Option<Timestamp> {
        self.baseline.history_since(agent)
    }

    fn seen_count(&self, agent: &str, feature: Feature, value: &str) -> u64 {
        self.baseline.seen_count(agent, feature, value)
    }
}

/// Records which key and install this database belongs to, or checks that it is ours.
fn bind_meta(conn: &Connection, path: &Path, key: &HostKey, host: Option<&str>) -> Result<()> {
    let fp = key.public().fingerprint();
    let get = |k: &str| db::meta_get(conn, k).map_err(|e| Error::db(path, e));
    match (get("key_fingerprint")?, get("install_id")?) {
        (None, None) => {
            let set = || -> rusqlite::Result<()> {
                let tx = conn.unchecked_transaction()?;
                db::meta_set(&tx, "key_fingerprint", &fp)?;
                db::meta_set(&tx, "install_id", key.install_id())?;
                db::meta_set(&tx, "public_key", &key.public().to_string())?;
                db::meta_set(&tx, "host", &host.map_or_else(sys::hostname, str::to_owned))?;
                db::meta_set(&tx, "created", &Timestamp::now().to_string())?;
                tx.commit()
            };
            set().map_err(|e| Error::db(path, e))
        }
        (Some(stored), _) if stored != fp => Err(Error::store(
            path,
            format!(
                "was written with key {stored}, but the host key is {fp}: refusing to continue \
                 its chain with another key (was host.key replaced? run `oknek verify`)"
            ),
        )),
        (_, Some(id)) if id != key.install_id() => Err(Error::store(
            path,
            format!(
                "belongs to install {id}, but the host key is of install {}",
                key.install_id()
            ),
        )),
        _ => Ok(()),
    }
}

/// Where the writer continues after [`Reconciler::run`].
struct Reconciled {
    journal: JournalWriter,
    /// (seq, hash) of the last bundle in the chain.
    tip: (u64, [u8; 32]),
    head: Option<Head>,
}

/// Brings journal and database back in step when the store is opened.
struct Reconciler<'a> {
    db_path: &'a Path,
    journal_dir: &'a Path,
    conn: &'a Connection,
    key: &'a HostKey,
    recovery: Recovery,
}

impl Reconciler<'_> {
    fn run(&mut self) -> Result<Reconciled> {
        let db_path = self.db_path;
        let dbe = |e| Error::db(db_path, e);
        let db_last = match db::last_seq(self.conn).map_err(dbe)? {
            Some(seq) => match db::record_by_seq(self.conn, seq).map_err(dbe)? {
                Some(r) => {
                    if !self.key.public().verify_hash(&r.hash, &r.sig) {
                        self.note(format!(
                            "the newest database record (seq {seq}) has an invalid signature; \
                             continuing after it — run `oknek verify`"
                        ));
                    }
                    Some((seq, r.hash))
                }
                None => {
                    self.note(format!(
                        "database row {seq} is unreadable; continuing after it"
                    ));
                    Some((seq, [0; 32]))
                }
            },
            None => None,
        };
        let mut tip = db_last.unwrap_or((0, GENESIS));
        let files = journal::list_files(self.journal_dir)?;
        // Scan from the file that holds the record after the database's last one.
        let start = files
            .iter()
            .rposition(|(first, _)| *first <= tip.0.saturating_add(1))
            .unwrap_or(0);
        let scan: Vec<PathBuf> = files[start.min(files.len())..]
            .iter()
            .map(|(_, p)| p.clone())
            .collect();
        let mut imports = Vec::new();
        // Earlier files end just before the scanned one starts.
        let mut journal_last = files.get(start).map_or(0, |f| f.0.saturating_sub(1));
        let mut fresh_file = false;
        let mut reader = JournalReader::new(scan);
        while let Some(line) = reader.next_line()? {
            let place = format!("{}:{}", line.file.display(), line.line_no);
            if !line.complete {
                if line.last_file {
                    let torn = self.quarantine(line.file, line.offset)?;
                    self.recovery.torn = Some(torn);
                } else {
                    self.note(format!(
                        "{place}: file ends mid-line; starting a new journal file"
                    ));
                    fresh_file = true;
                }
                break;
            }
            let text = match std::str::from_utf8(line.bytes) {
                Ok(t) => t,
                Err(_) => {
                    self.note(format!("{place}: not UTF-8; starting a new journal file"));
                    fresh_file = true;
                    break;
                }
            };
            let (body, hash, sig) = match split_line(text) {
                Ok(JournalLine::Head(_)) => continue,
                Ok(JournalLine::Bundle { body, hash, sig }) => (body, hash, sig),
                Err(e) => {
                    self.note(format!("{place}: {e}; starting a new journal file"));
                    fresh_file = true;
                    break;
                }
            };
            let view = match BodyView::parse(&body) {
                Ok(v) if bundle_hash(body.as_bytes()) == hash => v,
                _ => {
                    self.note(format!(
                        "{place}: damaged record; starting a new journal file"
                    ));
                    fresh_file = true;
                    break;
                }
            };
            journal_last = journal_last.max(view.seq);
            if view.seq <= tip.0 {
                continue;
            }
            let valid = view.seq == tip.0.saturating_add(1)
                && view.prev_hash() == Some(tip.1)
                && self.key.public().verify_hash(&hash, &sig);
            let (Some(time_ns), true) = (view.time_ns(), valid) else {
                self.note(format!(
                    "{place}: seq {} does not continue the chain after seq {}; left for \
                     `oknek verify`, starting a new journal file",
                    view.seq, tip.0
                ));
                fresh_file = true;
                break;
            };
            let record = Record {
                seq: view.seq,
                hash,
                sig,
                time_ns,
                agent: view.agent.clone(),
                rule: view.rule.to_string(),
                verdict: view.verdict.to_owned(),
                pid: view.process.pid,
                body: String::new(),
            };
            drop(view);
            let seq = record.seq;
            imports.push(Record {
                body: body.into_owned(),
                ..record
            });
            tip = (seq, hash);
        }
        drop(reader);

        let head = db::read_head(self.conn)
            .map_err(dbe)?
            .ok()
            .flatten()
            .filter(|h| self.key.public().verify_head(h));
        // Continue after the signed head if records up to it were lost, so the gap stays visible.
        if let Some(h) = head
            && h.seq > tip.0
        {
            self.note(format!(
                "the signed head is seq {} but records end at seq {}: seq {}..{} are missing; \
                 continuing after the head so the gap stays visible — run `oknek verify`",
                h.seq,
                tip.0,
                tip.0.saturating_add(1),
                h.seq
            ));
            tip = (h.seq, h.hash);
        }

        // Open the journal file to append to.
        let mut writer = match files.last() {
            Some((_, p)) if !fresh_file => JournalWriter::open(self.journal_dir, p.clone())?,
            _ => {
                let first = journal_last.max(tip.0).saturating_add(1);
                let path = self.journal_dir.join(journal::file_name(first));
                JournalWriter::open(self.journal_dir, path)?
            }
        };

        // Database records the journal lacks (its tail was lost): write them back.
        let mut restore = String::new();
        // Not after damage: the damaged file still holds later lines, and verify must see them.
        if let Some((db_seq, _)) = db_last
            && journal_last < db_seq
            && !fresh_file
        {
            // Rows that exist, not every number in between: a forged huge seq must not make
            // this loop run for ages.
            let mut stmt = self
                .conn
                .prepare(&format!(
                    "{} WHERE seq > ?1 ORDER BY seq",
                    db::SELECT_EVENTS
                ))
                .map_err(dbe)?;
            let mut rows = stmt
                .query([i64::try_from(journal_last).unwrap_or(i64::MAX)])
                .map_err(dbe)?;
            while let Some(row) = rows.next().map_err(dbe)? {
                if let Ok(r) = db::row_to_record(row).map_err(dbe)? {
                    r.push_line(&mut restore);
                    restore.push('\n');
                    self.recovery.restored += 1;
                }
            }
        }
        if !restore.is_empty() {
            writer.append(restore.as_bytes())?;
        }

        let mut head = head;
        let stale = head.is_none_or(|h| h.seq != tip.0 || h.hash != tip.1);
        if tip.0 > 0 && (stale || !imports.is_empty()) {
            writer.sync()?;
            let new_head = self.key.sign_head(tip.0, &tip.1);
            let tx = || -> rusqlite::Result<()> {
                let tx = self.conn.unchecked_transaction()?;
                for r in &imports {
                    db::insert_record(&tx, r)?;
                }
                db::write_head(&tx, &new_head)?;
                tx.commit()
            };
            tx().map_err(dbe)?;
            writer.append(format!("{}\n", head_line(&new_head)).as_bytes())?;
            self.recovery.imported = imports.len() as u64;
            head = Some(new_head);
        }
        Ok(Reconciled {
            journal: writer,
            tip,
            head,
        })
    }

    fn note(&mut self, msg: String) {
        self.recovery.notes.push(msg);
    }

    /// Moves the bytes from `offset` to the end of `file` into a `torn-*.partial` file beside it
    /// (kept for inspection, never read as journal), then cuts the file.
    fn quarantine(&mut self, file: &Path, offset: u64) -> Result<PathBuf> {
        let mut tail = Vec::new();
        fs::File::open(file)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(offset))?;
                f.read_to_end(&mut tail)
            })
            .map_err(|e| Error::io(file, e))?;
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("journal");
        let mut n = 0;
        let torn = loop {
            let p = self
                .journal_dir
                .join(format!("torn-{stem}-{offset}-{n}.partial"));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
            {
                Ok(mut f) => {
                    f.write_all(&tail)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| Error::io(&p, e))?;
                    break p;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(Error::io(&p, e)),
            }
        };
        let f = OpenOptions::new()
            .write(true)
            .open(file)
            .map_err(|e| Error::io(file, e))?;
        f.set_len(offset).map_err(|e| Error::io(file, e))?;
        f.sync_all().map_err(|e| Error::io(file, e))?;
        Ok(torn)
    }
}
