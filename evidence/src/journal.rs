//! The JSONL journal: append-only files rotated by size, named by the seq of their first bundle
//! (`evidence-00000000000000000001.jsonl`), so the chain can be followed across files.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys;

pub const JOURNAL_DIR: &str = "journal";

pub fn file_name(first_seq: u64) -> String {
    format!("evidence-{first_seq:020}.jsonl")
}

fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("evidence-")?.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The journal files of `dir` by first seq; other names are ignored.
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_file_name) {
            files.push((first, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// The open journal file the writer appends to.
pub(crate) struct JournalWriter {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Length of the file up to the last fully written batch.
    len: u64,
    /// True when a failed write may have left bytes past `len`.
    dirty: bool,
}

impl JournalWriter {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(dir: &Path, path: PathBuf) -> Result<JournalWriter> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if !existed {
            sys::fsync_dir(dir)?;
        }
        Ok(JournalWriter {
            dir: dir.to_owned(),
            path,
            file,
            len,
            dirty: false,
        })
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `data` whole, or leaves the file as it was.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        self.clean()?;
        if let Err(e) = self.file.write_all(data) {
            self.dirty = true;
            let _ = self.clean();
            return Err(Error::io(&self.path, e));
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Cuts the file back to `len` (used when the database commit of a batch fails).
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        self.len = len;
        self.dirty = true;
        self.clean()
    }

    fn clean(&mut self) -> Result<()> {
        if self.dirty {
            self.file
                .set_len(self.len)
                .map_err(|e| Error::io(&self.path, e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// A second handle on the open file, for the background syncer.
    pub fn file_clone(&self) -> Option<File> {
        self.file.try_clone().ok()
    }

    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Starts a new file whose first bundle will be `next_seq`.
    pub fn rotate(&mut self, next_seq: u64) -> Result<()> {
        self.sync()?;
        let path = self.dir.join(file_name(next_seq));
        *self = JournalWriter::open(&self.dir.clone(), path)?;
        Ok(())
    }
}

/// Reads every line of a set of journal files in order.
pub struct JournalReader {
    files: Vec<PathBuf>,
    idx: usize,
    reader: Option<BufReader<File>>,
    buf: Vec<u8>,
    line_no: u64,
    offset: u64,
}

/// One line of the journal.
pub struct Line<'a> {
    pub file: &'a Path,
    /// 1-based.
    pub line_no: u64,
    /// Byte offset of the line's start in its file.
    pub offset: u64,
    /// Without the newline.
    pub bytes: &'a [u8],
    /// False when the file ends without a newline after this line (a torn write).
    pub complete: bool,
    /// True for the last line of the last file.
    pub last_file: bool,
}

impl JournalReader {
    pub fn new(files: Vec<PathBuf>) -> JournalReader {
        JournalReader {
            files,
            idx: 0,
            reader: None,
            buf: Vec::with_capacity(4096),
            line_no: 0,
            offset: 0,
        }
    }

    /// The files of a journal directory, or one file.
    pub fn open(path: &Path) -> Result<JournalReader> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let files = if meta.is_dir() {
            list_files(path)?.into_iter().map(|(_, p)| p).collect()
        } else {
            vec![path.to_owned()]
        };
        Ok(JournalReader::new(files))
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn next_line(&mut self) -> Result<Option<Line<'_>>> {
        loop {
            if self.reader.is_none() {
                let Some(path) = self.files.get(self.idx) else {
                    return Ok(None);
                };
                let f = File::open(path).map_err(|e| Error::io(path, e))?;
                self.reader = Some(BufReader::with_capacity(1 << 20, f));
                self.line_no = 0;
                self.offset = 0;
            }
            let path = &self.files[self.idx];
            self.buf.clear();
            let reader = self.reader.as_mut().expect("opened above");
            let n = reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::io(path, e))?;
            if n == 0 {
                self.reader = None;
                self.idx += 1;
                continue;
            }
            let complete = self.buf.last() == Some(&b'\n');
            if complete {
                self.buf.pop();
            }
            self.line_no += 1;
            let offset = self.offset;
            self.offset += n as u64;
            return Ok(Some(Line {
                file: &self.files[self.idx],
                line_no: self.line_no,
                offset,
                bytes: &self.buf,
                complete,
                last_file: self.idx + 1 == self.files.len(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_seq() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("evidence-42.jsonl"), None);
        assert_eq!(parse_file_name("other.jsonl"), None);
    }

    #[test]
    fn reads_lines_across_files_and_flags_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(file_name(1)), "a\nb\n").unwrap();
        fs::write(dir.path().join(file_name(3)), "c\nd").unwrap();
        fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let mut r = JournalReader::open(dir.path()).unwrap();
        let mut seen = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            seen.push((
                String::from_utf8(l.bytes.to_vec()).unwrap(),
                l.line_no,
                l.offset,
                l.complete,
            ));
        }
        assert_eq!(
            seen,
            [
                ("a".into(), 1, 0, true),
                ("b".into(), 2, 2, true),
                ("c".into(), 1, 0, true),
                ("d".into(), 2, 2, false)
            ]
        );
    }

    #[test]
    fn append_is_all_or_nothing_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), dir.path().join(file_name(1))).unwrap();
        w.append(b"one\n").unwrap();
        let before = w.len();
        w.append(b"two\n").unwrap();
        w.truncate(before).unwrap();
        w.append(b"three\n").unwrap();
        assert_eq!(fs::read_to_string(w.path()).unwrap(), "one\nthree\n");
    }
}
