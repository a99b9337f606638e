//! oknek's evidence stage: every rule fire becomes a signed, hash-chained bundle, written to an
//! append-only JSONL journal and to SQLite; `oknek verify` checks both.
//!
//! The format is specified in docs/evidence.md, precisely enough to verify bundles without oknek.
//!
//! ```no_run
//! # use oknek_evidence::*;
//! # fn demo(event: &oknek_event::Event) -> Result<()> {
//! let mut cfg = StoreConfig::new("/var/lib/oknek");
//! cfg.create_key = true;
//! let mut store = Store::open(cfg)?;
//! store.observe(event); // every event feeds the baseline
//! store.append(&Firing {
//!     event,
//!     rule_id: "R1.ssh",
//!     rule_title: Some("Agent reads an SSH private key"),
//!     verdict: oknek_event::Verdict::Block,
//!     rule_set_digest: "sha256:…",
//!     capture: &[oknek_event::Field::Path],
//!     extra: None,
//! })?;
//! store.flush_due(std::time::Instant::now())?; // in the event loop; or flush()
//! store.close()?;
//! # Ok(()) }
//! ```

mod baseline;
mod bundle;
mod codec;
mod db;
mod error;
mod journal;
mod key;
mod query;
mod sigbatch;
mod store;
mod syncer;
mod sys;
mod verify;

pub use baseline::{Baseline, BaselineConfig, WINDOW_DAYS};
pub use bundle::{BUNDLE_TAG, FORMAT_VERSION, Firing, GENESIS, Record, bundle_hash};
pub use db::{DB_FILE, SCHEMA_VERSION};
pub use error::{Error, Result};
pub use journal::{JOURNAL_DIR, file_name as journal_file_name, list_files as journal_files};
pub use key::{HEAD_TAG, Head, HostKey, KEY_FILE, PUB_FILE, PublicKey, public_key_from_arg};
pub use query::{EventReader, Query, Summary};
pub use store::{Appended, Committed, JournalSync, Recovery, Store, StoreConfig};
pub use verify::{Finding, Problem, Progress, Report, VerifyOptions, verify};

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/oknek";

/// Helpers for tests and tools that build or inspect stores directly.
pub mod raw {
    pub use crate::bundle::head_line;
    pub use crate::codec::{base64, hex, to_canonical, unbase64};
    pub use crate::key::head_message;
    pub use crate::sigbatch::verify_batch;
}
