//! Content hashes of model weights opened by agents: the model is the file, so the evidence names
//! it by path and sha256.
//!
//! Weights are gigabytes; hashing one takes seconds, far longer than a decision may wait. The
//! open is judged at once (by path, R6.weights) and the file is hashed by one worker thread in
//! the background, a file at a time; when the hash is ready the daemon's loop is woken and
//! records an `oknek.weights_hash` bundle naming the file, its size and its sha256. Each file
//! version (device, inode, size, modification time) is hashed once.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};

use crate::filehash::{FileVersion, sha256_hex};

/// Rule id of the bundle that records a weights file's hash.
pub const WEIGHTS_HASH_RULE: &str = "oknek.weights_hash";
/// Versions remembered; beyond, the table starts over (a file may then be hashed again).
const MAX_REMEMBERED: usize = 4096;

/// A finished hash, for the bundle.
#[derive(Debug, Clone)]
pub struct Hashed {
    /// The open that asked for it (the event the bundle is about).
    pub event: oknek_event::Event,
    pub path: PathBuf,
    pub size: u64,
    /// Hex sha256, or why it could not be read.
    pub sha256: Result<String, String>,
}

struct Job {
    event: oknek_event::Event,
    path: PathBuf,
    version: FileVersion,
}

pub struct WeightsHasher {
    jobs: Sender<Job>,
    results: Receiver<(FileVersion, Hashed)>,
    /// Versions hashed or being hashed.
    seen: HashSet<FileVersion>,
    /// Finished hashes, by version, for status and tests.
    known: HashMap<FileVersion, String>,
}

impl WeightsHasher {
    /// Starts the worker; `wake` is called (from the worker) when a result is ready.
    pub fn start(wake: Arc<dyn Fn() + Send + Sync>) -> WeightsHasher {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (result_tx, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("oknekd-weights".into())
            .spawn(move || {
                for job in job_rx {
                    let sha256 = hash_file(&job.path, job.version);
                    let hashed = Hashed {
                        event: job.event,
                        path: job.path,
                        size: job.version.size,
                        sha256,
                    };
                    if result_tx.send((job.version, hashed)).is_err() {
                        return;
                    }
                    wake();
                }
            })
            .expect("spawning the weights hashing thread");
        WeightsHasher {
            jobs,
            results,
            seen: HashSet::new(),
            known: HashMap::new(),
        }
    }

    /// Asks for the hash of the file an agent opened, unless this version was hashed already.
    pub fn request(&mut self, event: &oknek_event::Event, path: &str) {
        let Ok(md) = std::fs::metadata(path) else {
            return;
        };
        if !md.is_file() {
            return;
        }
        let version = FileVersion::of(&md);
        if self.seen.len() >= MAX_REMEMBERED {
            self.seen.clear();
            self.known.clear();
        }
        if !self.seen.insert(version) {
            return;
        }
        let _ = self.jobs.send(Job {
            event: event.clone(),
            path: PathBuf::from(path),
            version,
        });
    }

    /// The hashes finished since the last call.
    pub fn finished(&mut self) -> Vec<Hashed> {
        let mut out = Vec::new();
        while let Ok((version, hashed)) = self.results.try_recv() {
            if let Ok(hex) = &hashed.sha256 {
                self.known.insert(version, hex.clone());
            }
            out.push(hashed);
        }
        out
    }

    /// The sha256 of a file version, once hashed.
    pub fn known(&self, version: &FileVersion) -> Option<&str> {
        self.known.get(version).map(String::as_str)
    }
}

/// Reads the file through; refuses a file that changed while being read (size or mtime), so a
/// hash always belongs to the version named.
fn hash_file(path: &std::path::Path, version: FileVersion) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let md = file.metadata().map_err(|e| e.to_string())?;
    if FileVersion::of(&md) != version {
        return Err("the file changed before it could be hashed".into());
    }
    let hex = sha256_hex(&mut file, 1 << 20).map_err(|e| e.to_string())?;
    let after = file.metadata().map_err(|e| e.to_string())?;
    if FileVersion::of(&after) != version {
        return Err("the file changed while it was hashed".into());
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn each_version_is_hashed_once_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"abc").unwrap();
        let mut hasher = WeightsHasher::start(Arc::new(|| {}));
        let event = oknek_event::Event {
            time: oknek_event::Timestamp::from_secs(1),
            source: oknek_event::Mechanism::Preload,
            process: Default::default(),
            action: oknek_event::Action::Open {
                path: path.display().to_string(),
                flags: 0,
                mode: 0,
            },
        };
        let p = path.to_str().unwrap();
        hasher.request(&event, p);
        hasher.request(&event, p);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut done = Vec::new();
        while done.is_empty() && Instant::now() < deadline {
            done = hasher.finished();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].sha256.as_deref(),
            Ok("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(done[0].size, 3);
        let version = FileVersion::of(&std::fs::metadata(&path).unwrap());
        assert!(hasher.known(&version).is_some());
        std::thread::sleep(Duration::from_millis(50));
        assert!(hasher.finished().is_empty(), "one hash per version");
    }
}
