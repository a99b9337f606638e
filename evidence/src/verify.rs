//! `oknek verify`: every signature, the hash chain, seq continuity, journal ↔ database
//! agreement and the signed head. Stops at the first bad record and says what is wrong with it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::Connection;

use crate::bundle::{BodyView, GENESIS, JournalLine, Record, bundle_hash, split_line};
use crate::codec::hex;
use crate::db::{self, DB_FILE};
use crate::error::{Error, Result};
use crate::journal::{JOURNAL_DIR, JournalReader};
use crate::key::{Head, HostKey, KEY_FILE, PublicKey};
use crate::sigbatch::verify_batch;

const SIG_BATCH: usize = 512;

/// What to verify. With `state_dir` the database, the journal and the signed head are checked
/// together; with only `journal` (a file or directory) and `pubkey`, the journal alone.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub state_dir: Option<PathBuf>,
    /// Default: `<state_dir>/journal`.
    pub journal: Option<PathBuf>,
    /// Default: the public half of `<state_dir>/host.key`.
    pub pubkey: Option<PublicKey>,
}

/// What is wrong with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The contents no longer match the signed hash, or a database column disagrees with them.
    Edited,
    /// The signature does not verify although the record names this key.
    BadSignature,
    /// A record that is not part of the chain (another key's signature, a broken link).
    Inserted,
    /// Records missing from the middle.
    Deleted,
    /// Records out of order.
    Reordered,
    /// The newest records are missing (the signed head or the other store has them).
    TruncatedTail,
    /// The records are signed by another key than the one given.
    WrongKey,
    /// The signed head is older than the records.
    HeadRolledBack,
    /// The signed head is missing, malformed or does not verify.
    HeadInvalid,
    /// A line or row that cannot be read at all.
    Malformed,
    /// Journal and database hold different (each validly signed) records.
    Mismatch,
}

impl Problem {
    pub fn name(self) -> &'static str {
        match self {
            Problem::Edited => "edited",
            Problem::BadSignature => "bad signature (edited or forged)",
            Problem::Inserted => "inserted",
            Problem::Deleted => "deleted",
            Problem::Reordered => "reordered",
            Problem::TruncatedTail => "truncated tail",
            Problem::WrongKey => "wrong key",
            Problem::HeadRolledBack => "head rolled back",
            Problem::HeadInvalid => "invalid head",
            Problem::Malformed => "malformed",
            Problem::Mismatch => "journal and database disagree",
        }
    }
}

/// The first bad record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub problem: Problem,
    /// The seq of the bad record (or where the missing ones start).
    pub seq: Option<u64>,
    /// Where: `journal evidence-….jsonl:12`, `database row 5`, `meta`.
    pub place: String,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(
                f,
                "seq {seq} ({}): {}: {}",
                self.place,
                self.problem.name(),
                self.detail
            ),
            None => write!(
                f,
                "{}: {}: {}",
                self.place,
                self.problem.name(),
                self.detail
            ),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Fingerprint of the key the signatures were checked against, and where it came from.
    pub key: String,
    pub key_source: String,
    /// Bundles whose hash, link and signature were checked.
    pub bundles: u64,
    pub journal_files: usize,
    pub db_rows: Option<u64>,
    pub head: Option<Head>,
    pub finding: Option<Finding>,
    /// Things worth saying that are not tampering (an interrupted write, a partial check).
    pub warnings: Vec<String>,
    pub seconds: f64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.finding.is_none()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    /// 0 when unknown.
    pub total: u64,
}

#[derive(Clone, Copy)]
enum Place {
    Journal { file: usize, line: u64 },
    Db { row: u64 },
}

struct PendingSig {
    hash: [u8; 32],
    sig: [u8; 64],
    seq: u64,
    place: Place,
}

/// One chain being walked (the journal's or the database's).
#[derive(Default)]
struct Stream {
    started: bool,
    last_seq: u64,
    last_hash: [u8; 32],
    count: u64,
}

struct Checker {
    key: PublicKey,
    key_id: String,
    files: Vec<PathBuf>,
    pending: Vec<PendingSig>,
    /// Both chains must begin at seq 1 (a whole store, not a single rotated file).
    from_genesis: bool,
    bundles: u64,
}

struct Rec<'a> {
    body: &'a str,
    hash: [u8; 32],
    sig: [u8; 64],
    place: Place,
    /// For database rows: the row with its indexed columns.
    row: Option<&'a Record>,
}

impl Checker {
    fn place(&self, p: Place) -> String {
        match p {
            Place::Journal { file, line } => {
                let name = self
                    .files
                    .get(file)
                    .and_then(|f| f.file_name())
                    .map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned());
                format!("journal {name}:{line}")
            }
            Place::Db { row } => format!("database row {row}"),
        }
    }

    fn finding(&self, problem: Problem, seq: Option<u64>, place: Place, detail: String) -> Finding {
        Finding {
            problem,
            seq,
            place: self.place(place),
            detail,
        }
    }

    /// Verifies the queued signatures; the first invalid one becomes a finding.
    fn flush(&mut self) -> Option<Finding> {
        let items: Vec<([u8; 32], [u8; 64])> =
            self.pending.iter().map(|p| (p.hash, p.sig)).collect();
        let pending = std::mem::take(&mut self.pending);
        if verify_batch(&self.key, &items) {
            return None;
        }
        let bad = pending
            .iter()
            .find(|p| !self.key.verify_hash(&p.hash, &p.sig))?;
        Some(
            self.finding(
                Problem::BadSignature,
                Some(bad.seq),
                bad.place,
                "the signature does not verify with the host key: the record and its hash were \
             changed together, or it was forged"
                    .into(),
            ),
        )
    }

    /// A finding about the current record only counts after every earlier signature checked
    /// out (so the report names the *first* bad record) and the current one's too.
    fn fail(&mut self, f: Finding, current: Option<(&Rec<'_>, u64)>) -> Finding {
        if let Some(earlier) = self.flush() {
            return earlier;
        }
        if let Some((rec, seq)) = current
            && !self.key.verify_hash(&rec.hash, &rec.sig)
        {
            return self.finding(
                Problem::BadSignature,
                Some(seq),
                rec.place,
                "the signature does not verify with the host key".into(),
            );
        }
        f
    }

    /// Checks one record against its stream. On success the signature is queued.
    fn check(&mut self, st: &mut Stream, rec: &Rec<'_>) -> Result<(), Finding> {
        let expected = st.last_seq.saturating_add(1);
        let row_key = rec.row.map(|r| r.seq);
        if bundle_hash(rec.body.as_bytes()) != rec.hash {
            let seq = BodyView::parse(rec.body)
                .map(|v| v.seq)
                .ok()
                .or(row_key)
                .unwrap_or(expected);
            let f = self.finding(
                Problem::Edited,
                Some(seq),
                rec.place,
                "the contents do not match the signed hash: changed after signing".into(),
            );
            return Err(self.fail(f, None));
        }
        let view = match BodyView::parse(rec.body) {
            Ok(v) => v,
            Err(e) => {
                let f = self.finding(
                    Problem::Malformed,
                    Some(row_key.unwrap_or(expected)),
                    rec.place,
                    format!("the record does not parse: {e}"),
                );
                return Err(self.fail(f, None));
            }
        };
        let seq = view.seq;
        if view.key != self.key_id && !self.key.verify_hash(&rec.hash, &rec.sig) {
            let (problem, detail) = if st.count == 0 {
                (
                    Problem::WrongKey,
                    format!(
                        "signed by key id {}, but the key given has key id {} ({}): the key file \
                         was replaced, or --pubkey names another host's key",
                        view.key,
                        self.key_id,
                        self.key.fingerprint()
                    ),
                )
            } else {
                (
                    Problem::Inserted,
                    format!(
                        "signed by key id {}, not by this host's key {}: a forged record",
                        view.key, self.key_id
                    ),
                )
            };
            let f = self.finding(problem, Some(seq), rec.place, detail);
            return Err(self.fail(f, None));
        }
        if let Some(k) = row_key
            && k != seq
        {
            let f = self.finding(
                Problem::Reordered,
                Some(k),
                rec.place,
                format!(
                    "the row for seq {k} holds the record of seq {seq}: rows were swapped or moved"
                ),
            );
            return Err(self.fail(f, Some((rec, seq))));
        }
        if st.started || self.from_genesis {
            if seq > expected {
                let f = self.finding(
                    Problem::Deleted,
                    Some(expected),
                    rec.place,
                    if expected + 1 == seq {
                        format!(
                            "seq {expected} is missing (seq {seq} follows seq {})",
                            expected.saturating_sub(1)
                        )
                    } else {
                        format!(
                            "seq {expected}..{} are missing (seq {seq} follows seq {})",
                            seq.saturating_sub(1),
                            expected.saturating_sub(1)
                        )
                    },
                );
                return Err(self.fail(f, Some((rec, seq))));
            }
            if seq < expected {
                let f = self.finding(
                    Problem::Reordered,
                    Some(seq),
                    rec.place,
                    format!(
                        "seq {seq} appears after seq {}: out of order or duplicated",
                        expected.saturating_sub(1)
                    ),
                );
                return Err(self.fail(f, Some((rec, seq))));
            }
        }
        let prev = view.prev_hash();
        let want_prev = if st.started {
            Some(st.last_hash)
        } else if seq == 1 {
            Some(GENESIS)
        } else {
            None // a journal file from the middle: its first link cannot be checked
        };
        if let Some(want) = want_prev
            && prev != Some(want)
        {
            let f = self.finding(
                Problem::Inserted,
                Some(seq),
                rec.place,
                format!(
                    "its prev_hash {} does not match the hash of seq {} ({}): not part of this chain",
                    view.prev,
                    seq.saturating_sub(1),
                    hex(&want)
                ),
            );
            return Err(self.fail(f, Some((rec, seq))));
        }
        if let Some(row) = rec.row {
            let mismatch = if Some(row.time_ns) != view.time_ns() {
                Some(("time_ns", row.time_ns.to_string(), view.time.to_owned()))
            } else if row.agent != view.agent {
                Some((
                    "agent",
                    format!("{:?}", row.agent),
                    format!("{:?}", view.agent),
                ))
            } else if row.rule != view.rule {
                Some(("rule", row.rule.clone(), view.rule.to_string()))
            } else if row.verdict != view.verdict {
                Some(("verdict", row.verdict.clone(), view.verdict.to_owned()))
            } else if row.pid != view.process.pid {
                Some(("pid", row.pid.to_string(), view.process.pid.to_string()))
            } else {
                None
            };
            if let Some((col, stored, signed)) = mismatch {
                let f = self.finding(
                    Problem::Edited,
                    Some(seq),
                    rec.place,
                    format!("column {col} is {stored}, but the signed record says {signed}"),
                );
                return Err(self.fail(f, Some((rec, seq))));
            }
        }
        st.started = true;
        st.last_seq = seq;
        st.last_hash = rec.hash;
        st.count += 1;
        self.bundles += 1;
        self.pending.push(PendingSig {
            hash: rec.hash,
            sig: rec.sig,
            seq,
            place: rec.place,
        });
        if self.pending.len() >= SIG_BATCH
            && let Some(f) = self.flush()
        {
            return Err(f);
        }
        Ok(())
    }
}

/// A bundle line read from the journal.
struct JRec {
    body: String,
    hash: [u8; 32],
    sig: [u8; 64],
    place: Place,
}

/// Reads the journal's bundle lines in order, checking head lines on the way.
struct JournalWalk {
    reader: JournalReader,
    stream: Stream,
    /// The highest seq named by a valid signed-head line.
    head_seq: u64,
    /// Set when the journal ends with a partial line.
    torn: Option<String>,
    done: bool,
}

impl JournalWalk {
    fn next(&mut self, c: &mut Checker) -> Result<Option<JRec>, Finding> {
        while !self.done {
            let line = match self.reader.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => {
                    return Err(Finding {
                        problem: Problem::Malformed,
                        seq: None,
                        place: "journal".into(),
                        detail: e.to_string(),
                    });
                }
            };
            let file = c.files.iter().position(|f| f == line.file).unwrap_or(0);
            let place = Place::Journal {
                file,
                line: line.line_no,
            };
            let expected = self.stream.last_seq.saturating_add(1);
            if !line.complete {
                if line.last_file {
                    self.torn = Some(format!(
                        "{} ends with a partial line of {} bytes after seq {}: a write was \
                         interrupted (the writer moves it aside on its next start)",
                        c.place(place),
                        line.bytes.len(),
                        self.stream.last_seq
                    ));
                    self.done = true;
                    break;
                }
                return Err(c.finding(
                    Problem::Malformed,
                    Some(expected),
                    place,
                    "the file ends in the middle of a line, but later journal files follow: \
                     the file was cut"
                        .into(),
                ));
            }
            let parsed = std::str::from_utf8(line.bytes)
                .map_err(|_| "not UTF-8".to_owned())
                .and_then(split_line);
            match parsed {
                Ok(JournalLine::Bundle { body, hash, sig }) => {
                    return Ok(Some(JRec {
                        body: body.into_owned(),
                        hash,
                        sig,
                        place,
                    }));
                }
                Ok(JournalLine::Head(h)) => {
                    if !c.key.verify_head(&h) {
                        return Err(c.finding(
                            Problem::HeadInvalid,
                            Some(h.seq),
                            place,
                            "this signed-head line does not verify with the host key".into(),
                        ));
                    }
                    if h.seq != self.stream.last_seq || h.hash != self.stream.last_hash {
                        let (problem, detail) = if h.seq > self.stream.last_seq {
                            (
                                Problem::Deleted,
                                format!(
                                    "this signed-head line names seq {}, but the journal's records \
                                     before it end at seq {}",
                                    h.seq, self.stream.last_seq
                                ),
                            )
                        } else {
                            (
                                Problem::Reordered,
                                format!(
                                    "this signed-head line names seq {}, but it follows seq {}",
                                    h.seq, self.stream.last_seq
                                ),
                            )
                        };
                        let f = c.finding(
                            problem,
                            Some(self.stream.last_seq.saturating_add(1)),
                            place,
                            detail,
                        );
                        return Err(c.fail(f, None));
                    }
                    self.head_seq = self.head_seq.max(h.seq);
                }
                Err(e) => {
                    let f = c.finding(
                        Problem::Malformed,
                        Some(expected),
                        place,
                        format!("not a journal record: {e}"),
                    );
                    return Err(c.fail(f, None));
                }
            }
        }
        self.done = true;
        Ok(None)
    }

    /// After a "deleted" finding at `seq`: if the record shows up later, it was moved.
    fn find_later(&mut self, c: &Checker, seq: u64) -> Option<String> {
        while let Ok(Some(line)) = self.reader.next_line() {
            let Ok(text) = std::str::from_utf8(line.bytes) else {
                continue;
            };
            if let Ok(JournalLine::Bundle { body, .. }) = split_line(text)
                && BodyView::parse(&body).is_ok_and(|v| v.seq == seq)
            {
                let file = c.files.iter().position(|f| f == line.file).unwrap_or(0);
                return Some(c.place(Place::Journal {
                    file,
                    line: line.line_no,
                }));
            }
        }
        None
    }
}

/// Resolves the key to check against: `--pubkey`, else the state directory's key file.
fn resolve_key(opts: &VerifyOptions) -> Result<(PublicKey, String)> {
    if let Some(k) = opts.pubkey {
        return Ok((k, "--pubkey".into()));
    }
    let Some(dir) = &opts.state_dir else {
        return Err(Error::store(
            Path::new("."),
            "give --pubkey (or --state-dir, whose host.key holds it) to check signatures",
        ));
    };
    let path = dir.join(KEY_FILE);
    let key = HostKey::load(&path)?;
    Ok((*key.public(), path.display().to_string()))
}

/// Runs the whole check. `Err` means the check could not run (unreadable files); tampering is
/// reported in [`Report::finding`].
pub fn verify(opts: &VerifyOptions, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
    let started = Instant::now();
    let (key, key_source) = resolve_key(opts)?;
    let journal_path = match (&opts.journal, &opts.state_dir) {
        (Some(j), _) => j.clone(),
        (None, Some(d)) => d.join(JOURNAL_DIR),
        (None, None) => {
            return Err(Error::store(
                Path::new("."),
                "give --state-dir or --journal",
            ));
        }
    };
    if let Some(dir) = &opts.state_dir
        && !dir.join(DB_FILE).exists()
        && !journal_path.exists()
    {
        return Err(Error::store(
            dir,
            "holds no evidence (no oknek.db and no journal/): nothing to verify",
        ));
    }
    let reader = JournalReader::open(&journal_path)?;
    let mut report = Report {
        key: key.fingerprint(),
        key_source,
        journal_files: reader.files().len(),
        ..Report::default()
    };
    let mut c = Checker {
        key,
        key_id: key.key_id(),
        files: reader.files().to_vec(),
        pending: Vec::new(),
        from_genesis: opts.state_dir.is_some(),
        bundles: 0,
    };
    let mut jw = JournalWalk {
        reader,
        stream: Stream::default(),
        head_seq: 0,
        torn: None,
        done: false,
    };
    let db_path = opts.state_dir.as_ref().map(|d| d.join(DB_FILE));
    let result = match &db_path {
        Some(p) => walk_with_db(p, &mut c, &mut jw, &mut report, progress),
        None => walk_journal(&mut c, &mut jw, &mut report, progress),
    };
    if let Err(mut f) = result? {
        // A record "missing" from the journal that turns up later was moved, not deleted.
        if f.problem == Problem::Deleted
            && f.place.starts_with("journal")
            && let Some(seq) = f.seq
            && let Some(later) = jw.find_later(&c, seq)
        {
            f.problem = Problem::Reordered;
            f.detail = format!("seq {seq} is out of place: it appears later, at {later}");
        }
        report.finding = Some(f);
    }
    if let Some(t) = jw.torn.take() {
        report.warnings.push(t);
    }
    report.bundles = c.bundles;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn walk_journal(
    c: &mut Checker,
    jw: &mut JournalWalk,
    report: &mut Report,
    progress: &mut dyn FnMut(Progress),
) -> Result<Result<(), Finding>> {
    let total = 0;
    loop {
        let j = match jw.next(c) {
            Ok(Some(j)) => j,
            Ok(None) => break,
            Err(f) => return Ok(Err(f)),
        };
        let rec = Rec {
            body: &j.body,
            hash: j.hash,
            sig: j.sig,
            place: j.place,
            row: None,
        };
        if let Err(f) = c.check(&mut jw.stream, &rec) {
            return Ok(Err(f));
        }
        if jw.stream.count.is_multiple_of(32768) {
            progress(Progress {
                done: jw.stream.count,
                total,
            });
        }
    }
    if let Some(f) = c.flush() {
        return Ok(Err(f));
    }
    if jw.stream.count > 0 && jw.head_seq < jw.stream.last_seq {
        report.warnings.push(format!(
            "seq {}..{} follow the last signed-head line: the writer had not committed them yet \
             (or was stopped before it could)",
            jw.head_seq + 1,
            jw.stream.last_seq
        ));
    }
    if let Some(first) = c.files.first() {
        report.warnings.push(format!(
            "journal only (from {}): the database and the signed head in meta were not checked",
            first.display()
        ));
    }
    Ok(Ok(()))
}

fn walk_with_db(
    db_path: &Path,
    c: &mut Checker,
    jw: &mut JournalWalk,
    report: &mut Report,
    progress: &mut dyn FnMut(Progress),
) -> Result<Result<(), Finding>> {
    let conn = db::open_ro(db_path)?;
    let dbe = |e| Error::db(db_path, e);
    // One read transaction: rows and head come from the same snapshot even while the writer runs.
    conn.execute_batch("BEGIN").map_err(dbe)?;
    let meta_fp = db::meta_get(&conn, "key_fingerprint").map_err(dbe)?;
    if let Some(fp) = &meta_fp
        && *fp != c.key.fingerprint()
    {
        report.warnings.push(format!(
            "meta records key {fp}, but signatures are checked against {} ({})",
            c.key.fingerprint(),
            report.key_source
        ));
    }
    let head = db::read_head(&conn).map_err(dbe)?;
    let total = db::last_seq(&conn).map_err(dbe)?.unwrap_or(0);
    let mut stmt = conn
        .prepare(&format!("{} ORDER BY seq", db::SELECT_EVENTS))
        .map_err(dbe)?;
    let mut rows = stmt.query([]).map_err(dbe)?;
    let mut ds = Stream::default();
    let mut db_rows = 0u64;
    // Journal records past the database's end: (first, last).
    let mut j_extra: Option<(u64, u64)> = None;
    let mut d_extra: Option<(u64, u64)> = None;
    let mut journal_done = false;
    let mut n = 0u64;
    loop {
        n += 1;
        let j = if journal_done {
            None
        } else {
            match jw.next(c) {
                Ok(j) => j,
                Err(f) => return Ok(Err(f)),
            }
        };
        journal_done = j.is_none();
        let row = match rows.next().map_err(dbe)? {
            None => None,
            Some(r) => match db::row_to_record(r).map_err(dbe)? {
                Ok(rec) => Some(rec),
                Err(e) => {
                    let seq = r.get::<_, i64>(0).map_err(dbe)? as u64;
                    let f = c.finding(Problem::Malformed, Some(seq), Place::Db { row: seq }, e);
                    return Ok(Err(c.fail(f, None)));
                }
            },
        };
        if row.is_some() {
            db_rows += 1;
        }
        match (j, row) {
            (None, None) => break,
            (Some(j), Some(d)) => {
                let same = j.body == d.body && j.hash == d.hash && j.sig == d.sig;
                let drec = Rec {
                    body: &d.body,
                    hash: d.hash,
                    sig: d.sig,
                    place: Place::Db { row: d.seq },
                    row: Some(&d),
                };
                if same {
                    // Identical bytes: one check covers both; the row's columns are checked too.
                    if let Err(f) = c.check(&mut ds, &drec) {
                        return Ok(Err(f));
                    }
                    jw.stream = Stream {
                        started: true,
                        last_seq: ds.last_seq,
                        last_hash: ds.last_hash,
                        count: ds.count,
                    };
                } else {
                    let jrec = Rec {
                        body: &j.body,
                        hash: j.hash,
                        sig: j.sig,
                        place: j.place,
                        row: None,
                    };
                    if let Err(f) = c.check(&mut ds, &drec) {
                        return Ok(Err(f));
                    }
                    c.bundles -= 1; // the same position, counted once
                    if let Err(f) = c.check(&mut jw.stream, &jrec) {
                        return Ok(Err(f));
                    }
                    let f = c.finding(
                        Problem::Mismatch,
                        Some(d.seq),
                        j.place,
                        format!(
                            "the journal and database row {} hold different records, each validly \
                             signed: one of them was replaced with another signed record",
                            d.seq
                        ),
                    );
                    return Ok(Err(c.fail(f, None)));
                }
            }
            (Some(j), None) => {
                let jrec = Rec {
                    body: &j.body,
                    hash: j.hash,
                    sig: j.sig,
                    place: j.place,
                    row: None,
                };
                if let Err(f) = c.check(&mut jw.stream, &jrec) {
                    return Ok(Err(f));
                }
                let s = jw.stream.last_seq;
                j_extra = Some(j_extra.map_or((s, s), |(a, _)| (a, s)));
            }
            (None, Some(d)) => {
                let drec = Rec {
                    body: &d.body,
                    hash: d.hash,
                    sig: d.sig,
                    place: Place::Db { row: d.seq },
                    row: Some(&d),
                };
                if let Err(f) = c.check(&mut ds, &drec) {
                    return Ok(Err(f));
                }
                d_extra = Some(d_extra.map_or((d.seq, d.seq), |(a, _)| (a, d.seq)));
            }
        }
        if n.is_multiple_of(32768) {
            progress(Progress {
                done: ds.count.max(jw.stream.count),
                total,
            });
        }
    }
    if let Some(f) = c.flush() {
        return Ok(Err(f));
    }
    drop(rows);
    drop(stmt);
    report.db_rows = Some(db_rows);
    let db_last = ds.last_seq;
    // The signed head in meta.
    let head = match head {
        Err(e) => return Ok(Err(at_meta(Problem::HeadInvalid, None, e))),
        Ok(None) if db_last > 0 => {
            return Ok(Err(at_meta(
                Problem::HeadInvalid,
                None,
                "there are records but no signed head".into(),
            )));
        }
        Ok(h) => h,
    };
    if let Some(h) = head {
        report.head = Some(h);
        if !c.key.verify_head(&h) {
            return Ok(Err(at_meta(
                Problem::HeadInvalid,
                Some(h.seq),
                "the signed head does not verify with the host key: edited or forged".into(),
            )));
        }
    }
    let head_seq = head.map_or(0, |h| h.seq);
    if let Some((first, last)) = d_extra {
        return Ok(Err(Finding {
            problem: Problem::TruncatedTail,
            seq: Some(first),
            place: "journal (end)".into(),
            detail: format!(
                "the journal ends at seq {} but the database continues to seq {last}: the \
                 journal's newest records were removed",
                first.saturating_sub(1)
            ),
        }));
    }
    let covered = jw.head_seq.max(head_seq);
    if covered > db_last {
        // Re-read: a writer may have committed after our snapshot was taken.
        if committed_meanwhile(db_path, covered) {
            report.warnings.push(format!(
                "the writer committed up to seq {covered} while verifying; run verify again to \
                 check the newest records against the database"
            ));
        } else {
            let in_journal = j_extra.is_some_and(|(_, last)| last >= covered);
            let detail = if in_journal {
                format!(
                    "seq {}..{covered} are in the journal and covered by a signed head, but \
                     missing from the database: its newest rows were deleted",
                    db_last.saturating_add(1)
                )
            } else {
                format!(
                    "the signed head says seq {covered}, but the records end at seq {db_last}: \
                     the newest records were deleted"
                )
            };
            return Ok(Err(at_meta(
                Problem::TruncatedTail,
                Some(db_last.saturating_add(1)),
                detail,
            )));
        }
    } else if let Some(h) = head {
        if h.seq < db_last {
            return Ok(Err(at_meta(
                Problem::HeadRolledBack,
                Some(h.seq.saturating_add(1)),
                format!(
                    "the signed head in meta is seq {}, but the database holds records up to seq \
                     {db_last}: the head was rolled back",
                    h.seq
                ),
            )));
        }
        if h.seq == db_last && h.hash != ds.last_hash {
            return Ok(Err(at_meta(
                Problem::HeadInvalid,
                Some(h.seq),
                "the signed head names another record than the database's last one".into(),
            )));
        }
        if jw.head_seq > h.seq {
            return Ok(Err(at_meta(
                Problem::HeadRolledBack,
                Some(h.seq.saturating_add(1)),
                format!(
                    "the journal's signed head is seq {}, but the head in meta is seq {}",
                    jw.head_seq, h.seq
                ),
            )));
        }
    }
    if let Some((first, last)) = j_extra
        && last > covered
    {
        report.warnings.push(format!(
            "seq {first}..{last} are in the journal but not yet in the database: a batch the \
             writer had not committed (it imports them on its next start)"
        ));
    }
    Ok(Ok(()))
}

/// A finding about the signed head in `meta`.
fn at_meta(problem: Problem, seq: Option<u64>, detail: String) -> Finding {
    Finding {
        problem,
        seq,
        place: "meta".into(),
        detail,
    }
}

fn committed_meanwhile(db_path: &Path, seq: u64) -> bool {
    db::open_ro(db_path)
        .ok()
        .and_then(|conn: Connection| db::last_seq(&conn).ok().flatten())
        .is_some_and(|last| last >= seq)
}
