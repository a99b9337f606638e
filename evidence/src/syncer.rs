//! The one helper thread of the evidence stage: it makes written data durable off the event loop.
//!
//! Why a thread: an fsync costs milliseconds here, and the daemon's single loop must not stall
//! for it. SQLite's automatic WAL checkpoints would run inside a commit and fsync the database
//! there; instead the writer's connection checkpoints only as a fallback (a large WAL) and this
//! thread runs PASSIVE checkpoints, which never block the writer, on its own connection. It also
//! fdatasyncs the journal every `JournalSync::Interval`. It holds no evidence state: losing it
//! costs durability against power loss, never correctness, and its errors are reported through
//! [`Syncer::take_error`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Shared {
    journal: Option<File>,
    error: Option<String>,
}

pub(crate) struct Syncer {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
}

impl Syncer {
    /// `journal_every`: fdatasync the journal this often (`None`: the writer syncs it itself).
    pub fn spawn(db_path: &Path, journal: Option<File>, journal_every: Option<Duration>) -> Syncer {
        let shared = Arc::new(Mutex::new(Shared {
            journal,
            error: None,
        }));
        let (tx, rx) = mpsc::channel::<()>();
        let db_path: PathBuf = db_path.to_owned();
        let sh = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("oknek-evidence-sync".into())
            .spawn(move || run(&db_path, &sh, &rx, journal_every))
            .ok();
        Syncer {
            stop: Some(tx),
            handle,
            shared,
        }
    }

    /// The journal file changed (rotation).
    pub fn set_journal(&self, file: Option<File>) {
        if let Ok(mut s) = self.shared.lock() {
            s.journal = file;
        }
    }

    pub fn take_error(&self) -> Option<String> {
        self.shared.lock().ok().and_then(|mut s| s.error.take())
    }

    /// Stops the thread after one last round of work.
    pub fn stop(&mut self) {
        self.stop.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    db_path: &Path,
    shared: &Mutex<Shared>,
    stop: &mpsc::Receiver<()>,
    journal_every: Option<Duration>,
) {
    let fail = |msg: String| {
        if let Ok(mut s) = shared.lock() {
            s.error = Some(msg);
        }
    };
    let conn = match Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => return fail(format!("{}: checkpoint connection: {e}", db_path.display())),
    };
    let _ = conn.busy_timeout(Duration::from_millis(100));
    let mut last_journal_sync = Instant::now();
    loop {
        let stopping = !matches!(
            stop.recv_timeout(CHECKPOINT_EVERY),
            Err(RecvTimeoutError::Timeout)
        );
        if let Some(every) = journal_every
            && (stopping || last_journal_sync.elapsed() >= every)
        {
            let file = shared
                .lock()
                .ok()
                .and_then(|s| s.journal.as_ref().and_then(|f| f.try_clone().ok()));
            if let Some(f) = file
                && let Err(e) = f.sync_data()
            {
                fail(format!("journal fdatasync: {e}"));
            }
            last_journal_sync = Instant::now();
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            fail(format!("{}: checkpoint: {e}", db_path.display()));
        }
        if stopping {
            return;
        }
    }
}
