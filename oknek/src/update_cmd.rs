//! `oknek update`: replace the active rule pack with a signed one, atomically, or roll back.
//!
//! A rule pack is a gzip'd tar of rule files (optionally under one top-level directory, with a
//! `fixtures/` directory) and `PACK.minisig` beside it, whose trusted comment names the file and
//! its version. The pack is verified, unpacked into a staging directory beside the active one,
//! linted (and its fixtures run), then exchanged with the active directory in one
//! `renameat2(RENAME_EXCHANGE)` and the daemon is told to reload. Until that exchange nothing
//! touches the active directory; if the daemon rejects the new set, the exchange is undone.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use oknek_engine::RuleSet;
use oknek_engine::fixtures::{FixtureFile, fixture_paths};
use oknekd::control::{Request, Response};

use crate::cli::{CliError, Global};
use crate::minisign::compare_versions;
use crate::release_cmd::{self, ReleaseError};

pub const DEFAULT_RULES_DIR: &str = "/var/lib/oknek/rules/active";
/// Written into each activated pack: what it is, for downgrade checks and `oknek update`.
pub const PACK_INFO_FILE: &str = ".oknek-pack";
/// Limits for an unpacked pack: rule packs are small text.
const MAX_PACK_BYTES: u64 = 64 << 20;
const MAX_ENTRIES: usize = 10_000;

const HELP: &str = "\
oknek update — activate a signed rule pack, or roll back to the previous one

Usage: oknek update [--rules-dir DIR] [--pubkey FILE] [--runtime-dir DIR] [--allow-downgrade]
                    (URL | FILE)
       oknek update --rollback [--rules-dir DIR] [--runtime-dir DIR]

FILE is a rule pack (.tar.gz) with its minisign signature FILE.minisig beside it; a URL
(https:// only) is downloaded with curl together with URL.minisig. The signature must be by the
trusted key and name the pack's file and version. The pack is unpacked beside DIR, every rule
file is linted and the fixtures are run; only then is it swapped with DIR in one atomic rename,
and oknekd is told to reload. The replaced pack is kept for --rollback. Any failure leaves DIR
as it was.

Options:
  --rules-dir DIR     The active rules directory [default: /var/lib/oknek/rules/active];
                      the previous pack is kept beside it (rules/previous for rules/active)
  --pubkey FILE       Trust this minisign public key instead of the pinned oknek release key
  --runtime-dir DIR   oknekd's sockets, for the reload [default: /run/oknek]
  --allow-downgrade   Accept a pack older than the active one
  --rollback          Exchange the active and the previous pack, then reload

Examples:
  $ sudo oknek update https://releases.example.org/oknek-rules-0.2.0.tar.gz
  $ sudo oknek update --pubkey /etc/oknek/site-rules.pub ./site-rules-14.tar.gz
  $ sudo oknek update --rollback
";

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("{0}")]
    Download(String),
    #[error("the pack is not a valid .tar.gz: {0}")]
    Archive(String),
    #[error("unsafe or unsupported entry {name:?} in the pack: {why}")]
    Entry { name: String, why: &'static str },
    #[error("the pack's rules do not load:\n{0}")]
    Lint(String),
    #[error("the pack's fixtures fail:\n{0}")]
    Fixtures(String),
    #[error(
        "pack version {found} is older than the active {active}: refusing a downgrade (--allow-downgrade)"
    )]
    Downgrade { found: String, active: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no previous rule pack at {0}")]
    NoPrevious(PathBuf),
    #[error("oknekd rejected the new rules, the previous ones were put back: {0}")]
    Rejected(String),
    #[error("another `oknek update` is running ({0} is locked)")]
    Locked(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError {
    let path = path.to_owned();
    move |source| UpdateError::Io { what, path, source }
}

struct Args {
    rules_dir: PathBuf,
    pubkey: Option<PathBuf>,
    runtime_dir: PathBuf,
    allow_downgrade: bool,
    rollback: bool,
    source: Option<String>,
}

pub fn main(parser: &mut lexopt::Parser, global: &Global) -> Result<ExitCode, CliError> {
    use lexopt::prelude::*;
    let mut args = Args {
        rules_dir: PathBuf::from(DEFAULT_RULES_DIR),
        pubkey: None,
        runtime_dir: global.runtime_dir.clone(),
        allow_downgrade: false,
        rollback: false,
        source: None,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("rules-dir") => args.rules_dir = parser.value()?.into(),
            Long("pubkey") => args.pubkey = Some(parser.value()?.into()),
            Long("runtime-dir") => args.runtime_dir = parser.value()?.into(),
            Long("allow-downgrade") => args.allow_downgrade = true,
            Long("rollback") => args.rollback = true,
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(v) if args.source.is_none() => args.source = Some(v.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let layout = Layout::new(&args.rules_dir)?;
    if args.rollback {
        if args.source.is_some() {
            return Err(CliError::usage("--rollback takes no pack"));
        }
        let _lock = layout.lock().map_err(CliError::failed)?;
        rollback(&layout, &args.runtime_dir).map_err(CliError::failed)?;
        return Ok(ExitCode::SUCCESS);
    }
    let source = args
        .source
        .clone()
        .ok_or_else(|| CliError::usage("update needs a rule pack (URL or FILE); see --help"))?;
    let key = release_cmd::trusted_key(args.pubkey.as_deref())?;
    let _lock = layout.lock().map_err(CliError::failed)?;
    update(&layout, &key, &source, &args).map_err(CliError::failed)?;
    Ok(ExitCode::SUCCESS)
}

/// Where the active, previous and staged packs live.
struct Layout {
    active: PathBuf,
    previous: PathBuf,
    parent: PathBuf,
}

impl Layout {
    fn new(active: &Path) -> Result<Layout, CliError> {
        let name = active
            .file_name()
            .ok_or_else(|| CliError::usage("--rules-dir must name a directory"))?
            .to_string_lossy()
            .into_owned();
        let parent = match active.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let previous = if name == "active" {
            parent.join("previous")
        } else {
            parent.join(format!("{name}.previous"))
        };
        Ok(Layout {
            active: active.to_owned(),
            previous,
            parent,
        })
    }

    /// One update at a time per rules directory.
    fn lock(&self) -> Result<fs::File, UpdateError> {
        fs::create_dir_all(&self.parent).map_err(io("cannot create", &self.parent))?;
        let path = self.parent.join(".oknek-update.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(UpdateError::Locked(path));
        }
        Ok(file)
    }
}

/// A staging directory removed on drop unless kept.
struct Staging {
    path: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn update(
    layout: &Layout,
    key: &crate::minisign::PublicKey,
    source: &str,
    args: &Args,
) -> Result<(), UpdateError> {
    let download_dir;
    let pack_path = if source.contains("://") {
        download_dir = tempfile_dir(&layout.parent)?;
        download(source, &download_dir.path)?
    } else {
        PathBuf::from(source)
    };
    let data = fs::read(&pack_path).map_err(io("cannot read", &pack_path))?;
    let version = release_cmd::verify_bytes(key, &pack_path, &data)?;
    let name = pack_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("verified {name}: rule pack version {version}");

    if let Some(active) = pack_version(&layout.active)
        && compare_versions(&version, &active).is_lt()
        && !args.allow_downgrade
    {
        return Err(UpdateError::Downgrade {
            found: version,
            active,
        });
    }

    let tar = gunzip(&pack_path)?;
    let staging = Staging {
        path: layout
            .parent
            .join(format!(".staging-{}", std::process::id())),
    };
    let _ = fs::remove_dir_all(&staging.path);
    fs::create_dir(&staging.path).map_err(io("cannot create", &staging.path))?;
    unpack(&tar, &staging.path)?;
    lint(&staging.path)?;
    let info = format!("version: {version}\nfile: {name}\n");
    let info_path = staging.path.join(PACK_INFO_FILE);
    fs::write(&info_path, info).map_err(io("cannot write", &info_path))?;
    sync_dir(&staging.path);

    activate(layout, &staging.path, &args.runtime_dir)?;
    println!(
        "active: rule pack {version} in {} (previous kept in {})",
        layout.active.display(),
        layout.previous.display()
    );
    Ok(())
}

/// Swaps `staged` in as the active pack; after a successful reload the replaced pack becomes
/// the previous one. On a rejected reload the swap is undone.
fn activate(layout: &Layout, staged: &Path, runtime_dir: &Path) -> Result<(), UpdateError> {
    let had_active = layout.active.symlink_metadata().is_ok();
    if had_active {
        exchange(staged, &layout.active)?;
    } else {
        fs::rename(staged, &layout.active).map_err(io("cannot activate", &layout.active))?;
    }
    sync_dir(&layout.parent);
    if let Err(e) = reload(runtime_dir) {
        // Put the old pack back where it was.
        if had_active {
            exchange(staged, &layout.active)?;
        } else {
            fs::rename(&layout.active, staged).map_err(io("cannot undo", &layout.active))?;
        }
        sync_dir(&layout.parent);
        return Err(e);
    }
    if had_active {
        // `staged` now holds the replaced pack: keep it as the previous one.
        let trash = layout
            .parent
            .join(format!(".old-previous-{}", std::process::id()));
        if layout.previous.symlink_metadata().is_ok() {
            fs::rename(&layout.previous, &trash).map_err(io("cannot move", &layout.previous))?;
        }
        fs::rename(staged, &layout.previous).map_err(io("cannot keep", &layout.previous))?;
        let _ = fs::remove_dir_all(&trash);
        sync_dir(&layout.parent);
    }
    Ok(())
}

fn rollback(layout: &Layout, runtime_dir: &Path) -> Result<(), UpdateError> {
    if !layout.previous.is_dir() {
        return Err(UpdateError::NoPrevious(layout.previous.clone()));
    }
    lint(&layout.previous)?;
    exchange(&layout.previous, &layout.active)?;
    sync_dir(&layout.parent);
    if let Err(e) = reload(runtime_dir) {
        exchange(&layout.previous, &layout.active)?;
        sync_dir(&layout.parent);
        return Err(e);
    }
    println!(
        "active: rule pack {} in {} (the replaced pack is now in {})",
        pack_version(&layout.active).unwrap_or_else(|| "(unversioned)".into()),
        layout.active.display(),
        layout.previous.display()
    );
    Ok(())
}

/// Exchanges two directories in one step (renameat2 RENAME_EXCHANGE, Linux ≥ 3.15).
fn exchange(a: &Path, b: &Path) -> Result<(), UpdateError> {
    let ca = CString::new(a.as_os_str().as_bytes()).expect("path without NUL");
    let cb = CString::new(b.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: two valid NUL-terminated paths relative to the current directory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(UpdateError::Io {
            what: "cannot exchange with",
            path: b.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Tells a running oknekd to reload. No daemon (no socket, or nobody listening) is fine: the
/// rules apply when it starts. A daemon that rejects the rules is an error.
fn reload(runtime_dir: &Path) -> Result<(), UpdateError> {
    let socket = runtime_dir.join("control.sock");
    let stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            println!(
                "oknekd is not reachable at {} ({e}); the rules apply when it starts",
                socket.display()
            );
            return Ok(());
        }
    };
    let rejected = |why: String| UpdateError::Rejected(why);
    let timeout = Some(std::time::Duration::from_secs(30));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut line = serde_json::to_vec(&Request::Reload {}).map_err(|e| rejected(e.to_string()))?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| rejected(format!("cannot ask oknekd: {e}")))?;
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut answer)
        .map_err(|e| rejected(format!("no answer from oknekd: {e}")))?;
    let response: Response = serde_json::from_str(&answer).map_err(|e| {
        rejected(format!(
            "no valid answer from oknekd ({e}; not root or the control group?)"
        ))
    })?;
    if !response.ok {
        return Err(rejected(
            response.error.unwrap_or_else(|| "no reason given".into()),
        ));
    }
    println!("oknekd reloaded");
    Ok(())
}

/// The version recorded in an activated pack.
pub fn pack_version(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(PACK_INFO_FILE)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("version: "))
        .map(str::to_owned)
}

struct TempDir {
    path: PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn tempfile_dir(parent: &Path) -> Result<TempDir, UpdateError> {
    let path = parent.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&path);
    fs::create_dir(&path).map_err(io("cannot create", &path))?;
    Ok(TempDir { path })
}

/// Downloads URL and URL.minisig into `dir` over HTTPS; returns the pack's path.
fn download(url: &str, dir: &Path) -> Result<PathBuf, UpdateError> {
    if !url.starts_with("https://") {
        return Err(UpdateError::Download(format!(
            "{url}: only https:// URLs are fetched (or give a local FILE)"
        )));
    }
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !n.starts_with('.') && !n.contains(['?', '#']))
        .ok_or_else(|| {
            UpdateError::Download(format!("{url}: the URL must end in the pack's file name"))
        })?;
    let pack = dir.join(name);
    for (from, to) in [
        (url.to_owned(), pack.clone()),
        (
            format!("{url}.minisig"),
            dir.join(format!("{name}.minisig")),
        ),
    ] {
        let status = Command::new("curl")
            .args(["--proto", "=https", "--tlsv1.2", "-fsSL", "--max-filesize"])
            .arg(MAX_PACK_BYTES.to_string())
            .arg("-o")
            .arg(&to)
            .arg(&from)
            .status()
            .map_err(|e| UpdateError::Download(format!("cannot run curl: {e}")))?;
        if !status.success() {
            return Err(UpdateError::Download(format!(
                "curl could not fetch {from} ({status})"
            )));
        }
    }
    Ok(pack)
}

/// Decompresses with the system's gzip: the pack is already verified, and a static binary does
/// not need its own inflate.
fn gunzip(path: &Path) -> Result<Vec<u8>, UpdateError> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| UpdateError::Archive(format!("cannot run gzip: {e}")))?;
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .take(MAX_PACK_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| UpdateError::Archive(e.to_string()))?;
    let output = child
        .wait_with_output()
        .map_err(|e| UpdateError::Archive(e.to_string()))?;
    if out.len() as u64 > MAX_PACK_BYTES {
        return Err(UpdateError::Archive(format!(
            "larger than {MAX_PACK_BYTES} bytes unpacked"
        )));
    }
    if !output.status.success() {
        return Err(UpdateError::Archive(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(out)
}

/// One member of a tar archive that we accept.
enum Member<'a> {
    Dir(Vec<String>),
    File(Vec<String>, &'a [u8]),
}

/// Reads a ustar/GNU tar: regular files and directories only; no links, devices or absolute or
/// `..` paths.
fn parse_tar(tar: &[u8]) -> Result<Vec<Member<'_>>, UpdateError> {
    let bad = |why: &str| UpdateError::Archive(why.to_owned());
    let mut members = Vec::new();
    let mut pos = 0;
    let mut long_name: Option<String> = None;
    loop {
        let header = tar
            .get(pos..pos + 512)
            .ok_or_else(|| bad("truncated archive"))?;
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let field = |range: std::ops::Range<usize>| {
            let raw = &header[range];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        };
        let octal = |range: std::ops::Range<usize>| -> Result<u64, UpdateError> {
            let text = field(range);
            let text = text.trim_matches([' ', '\0']);
            if text.is_empty() {
                return Ok(0);
            }
            u64::from_str_radix(text, 8).map_err(|_| bad("bad number in a header"))
        };
        let stored_sum = octal(148..156)?;
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != stored_sum {
            return Err(bad("header checksum mismatch"));
        }
        let size = octal(124..136)?;
        if size > MAX_PACK_BYTES {
            return Err(bad("member too large"));
        }
        let data_start = pos + 512;
        let data_end = data_start + size as usize;
        let data = tar
            .get(data_start..data_end)
            .ok_or_else(|| bad("truncated archive"))?;
        pos = data_start + (size as usize).div_ceil(512) * 512;
        let kind = header[156];
        if kind == b'L' {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            long_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
            continue;
        }
        let name = match long_name.take() {
            Some(n) => n,
            None => {
                let prefix = if &header[257..262] == b"ustar" {
                    field(345..500)
                } else {
                    String::new()
                };
                let base = field(0..100);
                if prefix.is_empty() {
                    base
                } else {
                    format!("{prefix}/{base}")
                }
            }
        };
        let components = safe_components(&name)?;
        match kind {
            b'0' | 0 => members.push(Member::File(components, data)),
            b'5' => members.push(Member::Dir(components)),
            _ => {
                return Err(UpdateError::Entry {
                    name,
                    why: "only regular files and directories are allowed",
                });
            }
        }
        if members.len() > MAX_ENTRIES {
            return Err(bad("too many members"));
        }
    }
    Ok(members)
}

fn safe_components(name: &str) -> Result<Vec<String>, UpdateError> {
    let entry = |why| UpdateError::Entry {
        name: name.to_owned(),
        why,
    };
    if name.starts_with('/') {
        return Err(entry("absolute path"));
    }
    let mut out = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(entry("`..` in the path")),
            p => out.push(p.to_owned()),
        }
    }
    Ok(out)
}

/// Unpacks into `dest` (an empty directory). A single top-level directory holding everything
/// is stripped, so `oknek-rules-1.0/10-x.yaml` lands as `10-x.yaml`.
fn unpack(tar: &[u8], dest: &Path) -> Result<(), UpdateError> {
    let members = parse_tar(tar)?;
    let paths = |m: &Member| match m {
        Member::Dir(p) | Member::File(p, _) => p.clone(),
    };
    let first: Option<String> = members.iter().find_map(|m| paths(m).first().cloned());
    let strip = match &first {
        Some(top) => members.iter().all(|m| {
            let p = paths(m);
            p.is_empty() || (p[0] == *top && (p.len() > 1 || matches!(m, Member::Dir(_))))
        }),
        None => false,
    };
    let mut files = 0;
    for m in &members {
        let mut p = paths(m);
        if strip && !p.is_empty() {
            p.remove(0);
        }
        if p.is_empty() {
            continue;
        }
        if p.iter().any(|c| c == PACK_INFO_FILE) {
            return Err(UpdateError::Entry {
                name: p.join("/"),
                why: "reserved name",
            });
        }
        let target = p.iter().fold(dest.to_path_buf(), |acc, c| acc.join(c));
        match m {
            Member::Dir(_) => fs::create_dir_all(&target).map_err(io("cannot create", &target))?,
            Member::File(_, data) => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&target)
                    .map_err(io("cannot create", &target))?;
                f.write_all(data)
                    .and_then(|()| f.sync_all())
                    .map_err(io("cannot write", &target))?;
                files += 1;
            }
        }
    }
    if files == 0 {
        return Err(UpdateError::Archive("the pack holds no files".into()));
    }
    Ok(())
}

/// Loads the whole set and runs its fixtures, as `oknek rules check` and `rules test` do.
fn lint(dir: &Path) -> Result<(), UpdateError> {
    let set = RuleSet::load_dir(dir).map_err(|e| UpdateError::Lint(e.to_string()))?;
    if set.is_empty() {
        return Err(UpdateError::Lint("the pack holds no rules".into()));
    }
    // Fixtures are optional in a pack; when present, all must pass.
    let paths = if dir.join("fixtures").is_dir() {
        fixture_paths(dir).map_err(io("cannot read fixtures in", dir))?
    } else {
        Vec::new()
    };
    let mut failures = Vec::new();
    for path in &paths {
        match FixtureFile::load(path) {
            Ok(file) => {
                for result in file.run(&set) {
                    if !result.passed() {
                        failures.push(format!(
                            "{}: {}: {}",
                            path.display(),
                            result.name,
                            result.failure.as_deref().unwrap_or("failed")
                        ));
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    if !failures.is_empty() {
        return Err(UpdateError::Fixtures(failures.join("\n")));
    }
    println!(
        "linted: {} rules in {} files, {} fixture files pass, digest {}",
        set.len(),
        set.files().len(),
        paths.len(),
        set.digest()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(safe_components("/etc/passwd").is_err());
        assert!(safe_components("a/../../b").is_err());
        assert_eq!(safe_components("./a//b/").unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn previous_sits_beside_active() {
        let l = Layout::new(Path::new("/var/lib/oknek/rules/active")).unwrap();
        assert_eq!(l.previous, Path::new("/var/lib/oknek/rules/previous"));
        let l = Layout::new(Path::new("/srv/r")).unwrap();
        assert_eq!(l.previous, Path::new("/srv/r.previous"));
    }
}
