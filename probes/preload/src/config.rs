//! Where oknekd is, and what to do when it does not answer.
//!
//! The agent controls its own environment, so on a host where oknek is installed nothing here
//! comes from the environment. Precedence, strongest first:
//!
//! 1. the hook table (`<runtime>/preload.table`, written by oknekd): fail mode and timeout;
//! 2. `/etc/oknek/preload.conf` (root-owned, not group/other-writable): `runtime_dir`,
//!    `fail_mode` (`open` | `closed`), `timeout_ms` — used until a table is mapped;
//! 3. the environment — `OKNEK_RUNTIME_DIR`, `OKNEK_PRELOAD_FAIL_MODE`, `OKNEK_PRELOAD_TIMEOUT_MS` —
//!    honoured **only** when neither `/etc/oknek/preload.conf` nor the default
//!    `/run/oknek/preload.table` exists (a host without oknek installed: tests, trying it out);
//! 4. built-in defaults: `/run/oknek`, fail open, 200 ms.
//!
//! "Installed" (1 or 2 present) also means the table must be owned by root and not writable by
//! group or others, or it is ignored.

use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::sync::atomic::{AtomicU8, Ordering};

use oknek_protocol::table::{DEFAULT_TIMEOUT_MS, FILE_NAME, MAX_TIMEOUT_MS, MIN_TIMEOUT_MS};

use crate::sys;

pub const DEFAULT_RUNTIME_DIR: &str = match option_env!("OKNEK_PRELOAD_DEFAULT_RUNTIME_DIR") {
    Some(d) => d,
    None => "/run/oknek",
};
pub const CONF_PATH: &str = match option_env!("OKNEK_PRELOAD_CONF") {
    Some(p) => p,
    None => "/etc/oknek/preload.conf",
};
const SOCKET_NAME: &[u8] = b"oknek.sock";
/// The socket path must fit `sun_path` (108 bytes with the NUL): the directory gets the rest.
pub const MAX_RUNTIME_LEN: usize = 96;

pub struct Config {
    runtime: [u8; MAX_RUNTIME_LEN],
    runtime_len: usize,
    /// This process's executable (what /proc/self/exe names) and its identity, for the table's
    /// self-exe entries; `exe_len` 0 when unknown.
    exe: [u8; 4096],
    exe_len: usize,
    exe_dev: u64,
    exe_ino: u64,
    pub fail_closed: bool,
    pub timeout_ms: u32,
    /// oknek is installed here: environment ignored, table must be root-owned.
    pub locked: bool,
}

// Evaluated at compile time only (Config::DEFAULT): an out-of-range index there is a build error,
// never a run-time panic.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const fn default_runtime() -> [u8; MAX_RUNTIME_LEN] {
    let src = DEFAULT_RUNTIME_DIR.as_bytes();
    let mut out = [0u8; MAX_RUNTIME_LEN];
    let mut i = 0;
    while i < src.len() && i < MAX_RUNTIME_LEN {
        out[i] = src[i];
        i += 1;
    }
    out
}

const fn min(a: usize, b: usize) -> usize {
    if a < b { a } else { b }
}

impl Config {
    const DEFAULT: Config = Config {
        runtime: default_runtime(),
        runtime_len: min(DEFAULT_RUNTIME_DIR.len(), MAX_RUNTIME_LEN),
        exe: [0; 4096],
        exe_len: 0,
        exe_dev: 0,
        exe_ino: 0,
        fail_closed: false,
        timeout_ms: DEFAULT_TIMEOUT_MS,
        locked: false,
    };

    /// This process's executable: path, dev, ino (`None` if /proc could not tell).
    pub fn exe(&self) -> Option<(&[u8], u64, u64)> {
        let p = self.exe.get(..self.exe_len).filter(|p| !p.is_empty())?;
        Some((p, self.exe_dev, self.exe_ino))
    }

    pub fn runtime_dir(&self) -> &[u8] {
        self.runtime.get(..self.runtime_len).unwrap_or(&[])
    }

    fn set_runtime_dir(&mut self, dir: &[u8]) -> bool {
        // Absolute, fits, and no NUL inside.
        let dir = match dir {
            [b'/', ..] if dir.len() <= MAX_RUNTIME_LEN && !dir.contains(&0) => dir,
            _ => return false,
        };
        let Some(dst) = self.runtime.get_mut(..dir.len()) else {
            return false;
        };
        dst.copy_from_slice(dir);
        self.runtime_len = dir.len();
        true
    }

    /// `<runtime>/<name>\0` into `buf`; the slice includes the NUL.
    fn join<'b>(&self, name: &[u8], buf: &'b mut [u8; 128]) -> &'b [u8] {
        let mut len = 0usize;
        for &b in self
            .runtime_dir()
            .iter()
            .chain(b"/")
            .chain(name)
            .chain(&[0u8])
        {
            match buf.get_mut(len) {
                Some(d) => *d = b,
                None => return &[],
            }
            len = len.saturating_add(1);
        }
        buf.get(..len).unwrap_or(&[])
    }

    pub fn table_path<'b>(&self, buf: &'b mut [u8; 128]) -> &'b [u8] {
        self.join(FILE_NAME.as_bytes(), buf)
    }

    /// The hook socket's address and length.
    pub fn socket_addr(&self) -> (libc::sockaddr_un, u32) {
        // SAFETY: sockaddr_un is plain data; all-zero is valid.
        let mut a: libc::sockaddr_un = unsafe { core::mem::zeroed() };
        a.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let mut buf = [0u8; 128];
        let path = self.join(SOCKET_NAME, &mut buf);
        for (d, &s) in a.sun_path.iter_mut().zip(path) {
            *d = s as libc::c_char;
        }
        let base = core::mem::offset_of!(libc::sockaddr_un, sun_path);
        let len = base.saturating_add(path.len().min(a.sun_path.len()));
        (a, len as u32)
    }
}

struct Global(UnsafeCell<Config>);

// SAFETY: the config is written only by the one thread that wins STATE 0 → 1, before it stores
// 2 (Release); it is read only after loading 2 (Acquire), and never written again.
unsafe impl Sync for Global {}

static CONFIG: Global = Global(UnsafeCell::new(Config::DEFAULT));
const NEW: u8 = 0;
const LOADING: u8 = 1;
const READY: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(NEW);

/// The configuration, loading it on first use.
pub fn get() -> &'static Config {
    if STATE.load(Ordering::Acquire) != READY {
        ensure_loaded();
    }
    // SAFETY: STATE is READY (Acquire): the writes are visible and finished.
    unsafe { &*CONFIG.0.get() }
}

/// Returns true for the one call that did the loading (it then finishes process setup).
pub fn ensure_loaded() -> bool {
    if STATE
        .compare_exchange(NEW, LOADING, Ordering::Acquire, Ordering::Acquire)
        .is_ok()
    {
        // SAFETY: this thread won NEW → LOADING; nobody reads until READY.
        let cfg = unsafe { &mut *CONFIG.0.get() };
        load(cfg);
        STATE.store(READY, Ordering::Release);
        return true;
    }
    // Another thread is loading: a handful of system calls. (This thread cannot be the loader:
    // a hook re-entered on the loading thread is refused by the in-hook guard first.)
    while STATE.load(Ordering::Acquire) != READY {
        sys::sched_yield();
    }
    false
}

fn load(cfg: &mut Config) {
    load_exe(cfg);
    let mut pbuf = [0u8; 256];
    let conf = nul_terminated(CONF_PATH.as_bytes(), &mut pbuf);
    match sys::openat(libc::AT_FDCWD, conf, libc::O_RDONLY, 0) {
        Ok(fd) => {
            cfg.locked = true;
            let safe = sys::fstat(fd).is_ok_and(|st| {
                st.st_uid == 0
                    && st.st_mode & libc::S_IFMT == libc::S_IFREG
                    && st.st_mode & 0o022 == 0
            });
            let mut text = [0u8; 2048];
            let n = if safe {
                sys::read(fd, &mut text).unwrap_or(0)
            } else {
                0
            };
            sys::close(fd);
            parse_conf(cfg, text.get(..n).unwrap_or(&[]));
        }
        // It exists but cannot be read: installed, defaults.
        Err(e) if e != libc::ENOENT && e != libc::ENOTDIR => cfg.locked = true,
        Err(_) => {}
    }
    if !cfg.locked {
        let mut tbuf = [0u8; 128];
        let t = Config::DEFAULT.table_path(&mut tbuf);
        if sys::fstatat(libc::AT_FDCWD, t, 0).is_ok() {
            cfg.locked = true;
        }
    }
    if !cfg.locked {
        if let Some(d) = env(c"OKNEK_RUNTIME_DIR") {
            cfg.set_runtime_dir(d);
        }
        if let Some(m) = env(c"OKNEK_PRELOAD_FAIL_MODE") {
            set_fail_mode(cfg, m);
        }
        if let Some(t) = env(c"OKNEK_PRELOAD_TIMEOUT_MS") {
            set_timeout(cfg, t);
        }
    }
}

/// Records /proc/self/exe. An image replaced by exec loads the shim afresh, so once is enough.
fn load_exe(cfg: &mut Config) {
    const EXE: &[u8] = b"/proc/self/exe\0";
    let (Ok(n), Ok(st)) = (
        sys::readlink(EXE, &mut cfg.exe),
        sys::fstatat(libc::AT_FDCWD, EXE, 0),
    ) else {
        return;
    };
    let path = cfg.exe.get(..n).unwrap_or(&[]);
    // A truncated name or a deleted file is no name to match.
    if n < cfg.exe.len() && path.first() == Some(&b'/') && !path.ends_with(b" (deleted)") {
        cfg.exe_len = n;
        cfg.exe_dev = st.st_dev;
        cfg.exe_ino = st.st_ino;
    }
}

fn nul_terminated<'b>(s: &[u8], buf: &'b mut [u8; 256]) -> &'b [u8] {
    let n = s.len().min(buf.len().saturating_sub(1));
    if let (Some(d), Some(src)) = (buf.get_mut(..n), s.get(..n)) {
        d.copy_from_slice(src);
    }
    if let Some(z) = buf.get_mut(n) {
        *z = 0;
    }
    buf.get(..n.saturating_add(1)).unwrap_or(&[])
}

fn env(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv with a NUL-terminated name; it neither allocates nor is hooked. The result
    // points into the environment, which this process does not change while loading.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e.saturating_add(1));
    s.get(start..end).unwrap_or(&[])
}

fn set_fail_mode(cfg: &mut Config, v: &[u8]) {
    match trim(v) {
        b"closed" => cfg.fail_closed = true,
        b"open" => cfg.fail_closed = false,
        _ => {}
    }
}

fn set_timeout(cfg: &mut Config, v: &[u8]) {
    let mut n: u32 = 0;
    let v = trim(v);
    if v.is_empty() {
        return;
    }
    for &b in v {
        if !b.is_ascii_digit() {
            return;
        }
        n = n
            .saturating_mul(10)
            .saturating_add(u32::from(b.wrapping_sub(b'0')));
    }
    cfg.timeout_ms = n.clamp(MIN_TIMEOUT_MS, MAX_TIMEOUT_MS);
}

/// `key = value` lines; `#` starts a comment line; unknown keys are ignored.
fn parse_conf(cfg: &mut Config, text: &[u8]) {
    for line in text.split(|&b| b == b'\n') {
        let line = trim(line);
        if line.is_empty() || line.first() == Some(&b'#') {
            continue;
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (k, v) = (
            trim(line.get(..eq).unwrap_or(&[])),
            trim(line.get(eq.saturating_add(1)..).unwrap_or(&[])),
        );
        match k {
            b"runtime_dir" => {
                cfg.set_runtime_dir(v);
            }
            b"fail_mode" => set_fail_mode(cfg, v),
            b"timeout_ms" => set_timeout(cfg, v),
            _ => {}
        }
    }
}
