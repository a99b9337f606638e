//! The shim preloaded into real programs (cat, sh, env, python3, a small C program), talking to
//! a fake oknekd that denies what the test's table protects.
//!
//! Each test has its own runtime directory (`OKNEK_RUNTIME_DIR`; honoured because no oknek is
//! installed on the test host — the tests skip themselves if one is) and its own fake daemon, so
//! they run in parallel. The shim is the cdylib cargo builds for this package (see
//! `support::shim`).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use oknek_protocol::table::{Action, Kind, MatchType, TableBuilder};
use support::{
    Behaviour, FakeDaemon, Frame, Req, run, run_limited, shimmed, skip_if_installed, text,
};

const EPERM: i32 = libc::EPERM;

/// A temporary tree: a protected directory with a key, a public file, a runtime directory.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rt: PathBuf,
    secret_dir: PathBuf,
    secret: PathBuf,
    public: PathBuf,
}

fn tree() -> Tree {
    // Under /tmp: the socket path must fit sun_path.
    let dir = tempfile::Builder::new()
        .prefix("okpre")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let root = dir.path().to_path_buf();
    let rt = root.join("run");
    let secret_dir = root.join("secret");
    std::fs::create_dir_all(&rt).unwrap();
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("key");
    std::fs::write(&secret, "TOP SECRET\n").unwrap();
    let public = root.join("public.txt");
    std::fs::write(&public, "public\n").unwrap();
    Tree {
        _dir: dir,
        root,
        rt,
        secret_dir,
        secret,
        public,
    }
}

fn dir_prefix(p: &Path) -> Vec<u8> {
    let mut v = p.as_os_str().as_encoded_bytes().to_vec();
    v.push(b'/');
    v
}

fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
}

/// Open and watch of anything under `secret/` ask, and the key is protected by identity too.
fn file_table(t: &Tree, fail_closed: bool) -> TableBuilder {
    let mut b = TableBuilder::new(1);
    b.fail_closed(fail_closed).timeout_ms(200);
    b.path(
        Kind::Open.bit() | Kind::Watch.bit(),
        Action::Ask,
        MatchType::Prefix,
        &dir_prefix(&t.secret_dir),
    )
    .unwrap();
    let md = std::fs::metadata(&t.secret).unwrap();
    b.inode(
        Kind::Open.bit() | Kind::Watch.bit(),
        Action::Ask,
        md.dev(),
        md.ino(),
    )
    .unwrap();
    b
}

/// What a real daemon does with an open/watch question: resolve the path (relative ones through
/// /proc/PID), then deny if a rule names it — by path prefix or by the file's identity.
fn file_judge(t: &Tree) -> Behaviour {
    let prefix = dir_prefix(&t.secret_dir);
    let md = std::fs::metadata(&t.secret).unwrap();
    let id = (md.dev(), md.ino());
    Behaviour::Judge(Box::new(move |f: &Frame| {
        let Some(path) = f.path() else { return 0 };
        let mut p = PathBuf::from(std::ffi::OsStr::from_bytes(path));
        if p.is_relative() {
            let base = match &f.req {
                Req::Open { dirfd, .. } if *dirfd != libc::AT_FDCWD => {
                    format!("/proc/{}/fd/{dirfd}", f.pid)
                }
                _ => format!("/proc/{}/cwd", f.pid),
            };
            p = std::fs::read_link(base).unwrap_or_default().join(p);
        }
        let by_path = p.as_os_str().as_encoded_bytes().starts_with(&prefix);
        let by_id = std::fs::metadata(&p).is_ok_and(|m| (m.dev(), m.ino()) == id);
        if by_path || by_id { EPERM } else { 0 }
    }))
}

/// The interpreter itself, not a wrapper script (pyenv's shims re-exec through bash and env).
fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn python(rt: &Path, script: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut c = shimmed(rt, python3());
    c.arg("-c").arg(script).args(args);
    run(&mut c)
}

/// The shim's own counters, read in-process through ctypes.
const STATS_PY: &str = r#"
import ctypes
def stats():
    a = (ctypes.c_uint64 * 5)()
    ctypes.CDLL(None).oknek_preload_stats(a, 5)
    return dict(zip(["asked", "denied", "unavailable", "reported", "dropped"], a))
"#;

#[test]
fn cat_of_a_protected_file_fails_and_unprotected_files_cost_no_round_trip() {
    skip_if_installed!();
    let t = tree();
    support::publish(&t.rt, &file_table(&t, true));
    let d = FakeDaemon::start(&t.rt, file_judge(&t));

    let out = run(shimmed(&t.rt, "cat").arg(&t.secret));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "the secret leaked: {}",
        text(&out.stdout)
    );
    let frames = d.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let f = &frames[0];
    assert!(f.want_verdict);
    assert_eq!(f.path(), Some(bytes(&t.secret)));
    // The sender is identified by the kernel.
    assert!(f.pid > 0 && f.uid != u32::MAX, "{f:?}");

    d.clear();
    let out = run(shimmed(&t.rt, "cat").arg(&t.public));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "public\n");
    // Not one frame: cat's own opens (locale, the file) never reached the daemon.
    assert!(d.frames().is_empty(), "{:?}", d.frames());

    // The shim's own counters agree: 200 opens, no question asked.
    let script = format!(
        "{STATS_PY}\nimport sys\nfor _ in range(200): open(sys.argv[1]).read()\nprint(stats())"
    );
    let out = python(&t.rt, &script, &[t.public.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("'asked': 0"),
        "{}",
        text(&out.stdout)
    );
    assert!(d.frames().is_empty());
}

#[test]
fn python_open_is_judged_however_the_path_is_spelled() {
    skip_if_installed!();
    let t = tree();
    support::publish(&t.rt, &file_table(&t, true));
    let _d = FakeDaemon::start(&t.rt, file_judge(&t));
    let sym = t.root.join("innocent-link");
    std::os::unix::fs::symlink(&t.secret, &sym).unwrap();
    let hard = t.root.join("innocent-hardlink");
    std::fs::hard_link(&t.secret, &hard).unwrap();
    let script = r#"
import os, sys
root = sys.argv[1]
def attempt(p, mode="r"):
    try:
        with open(p, mode) as f:
            if "r" in mode: f.read()
        return "ok"
    except PermissionError:
        return "denied"
os.chdir(os.path.join(root, "secret"))
print("relative", attempt("key"))
os.chdir(root)
print("dotdot", attempt("run/../secret/./key"))
print("symlink", attempt("innocent-link"))
print("hardlink", attempt("innocent-hardlink"))
print("truncate", attempt("innocent-hardlink", "w"))
print("public", attempt("public.txt"))
fd = os.open(os.path.join(root, "secret"), os.O_RDONLY | os.O_DIRECTORY)
try:
    os.open("key", os.O_RDONLY, dir_fd=fd); print("dirfd ok")
except PermissionError:
    print("dirfd denied")
"#;
    let out = python(&t.rt, script, &[t.root.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for want in [
        "relative denied",
        "dotdot denied",
        "symlink denied",
        "hardlink denied",
        "truncate denied",
        "public ok",
        "dirfd denied",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
    // The truncating open was refused before it touched the file.
    assert_eq!(std::fs::read_to_string(&t.secret).unwrap(), "TOP SECRET\n");
}

/// The C helper, built with the system C compiler (skips when there is none).
fn okcall() -> Option<PathBuf> {
    static BIN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // Built into cargo's scratch directory for tests; renamed into place so that a
        // concurrent test run never sees a half-written binary.
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/okcall.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let tmp = dir.join(format!("okcall.{}", std::process::id()));
        let out = dir.join("okcall");
        let st = Command::new("cc")
            .args(["-O2", "-D_FORTIFY_SOURCE=2", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .ok()?;
        (st.success() && std::fs::rename(&tmp, &out).is_ok()).then_some(out)
    })
    .clone()
}

#[test]
fn c_entry_points_fopen_freopen_creat_openat_and_fortified_open() {
    skip_if_installed!();
    let Some(okcall) = okcall() else {
        eprintln!("skipped: no C compiler");
        return;
    };
    let t = tree();
    support::publish(&t.rt, &file_table(&t, true));
    let _d = FakeDaemon::start(&t.rt, file_judge(&t));
    let newfile = t.secret_dir.join("new");
    for (mode, path, want) in [
        ("fopen", &t.secret, "fopen failed errno=1"),
        ("fopen", &t.public, "fopen ok"),
        ("fopen-w", &t.secret, "fopen failed errno=1"),
        ("freopen", &t.secret, "freopen failed errno=1"),
        ("freopen", &t.public, "freopen ok"),
        ("creat", &newfile, "creat failed errno=1"),
        ("openat", &t.secret, "openat failed errno=1"),
        ("openat", &t.public, "openat ok"),
        ("open2", &t.secret, "open failed errno=1"),
        ("open2", &t.public, "open ok"),
    ] {
        let out = run(shimmed(&t.rt, okcall.to_str().unwrap())
            .arg(mode)
            .arg(path)
            .arg("0"));
        assert!(
            text(&out.stdout).contains(want),
            "{mode} {}: {} {}",
            path.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read_to_string(&t.secret).unwrap(), "TOP SECRET\n");
    assert!(!newfile.exists());
}

/// A blocked program: a copy of `touch`, so running it leaves a visible trace.
fn evil(t: &Tree) -> PathBuf {
    let bin = t.root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let evil = bin.join("evil");
    std::fs::copy("/usr/bin/touch", &evil).unwrap();
    evil
}

#[test]
fn exec_of_a_blocked_binary_fails_through_every_entry_point() {
    skip_if_installed!();
    let t = tree();
    let evil = evil(&t);
    // The blocked program, and the file table (for the vfork case below).
    let mut b = file_table(&t, true);
    b.path(
        Kind::Exec.bit(),
        Action::Ask,
        MatchType::Exact,
        bytes(&evil),
    )
    .unwrap();
    support::publish(&t.rt, &b);
    let evil2 = evil.clone();
    let Behaviour::Judge(files) = file_judge(&t) else {
        unreachable!()
    };
    let d = FakeDaemon::start(
        &t.rt,
        Behaviour::Judge(Box::new(move |f| match &f.req {
            Req::Exec { path, .. } if path == bytes(&evil2) => EPERM,
            _ => files(f),
        })),
    );
    let marker = t.root.join("marker");
    let path_env = format!(
        "{}:{}",
        evil.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let m = marker.to_str().unwrap();
    let e = evil.to_str().unwrap();

    // sh's exec builtin → execve.
    let out = run(shimmed(&t.rt, "sh").args(["-c", &format!("exec {e} {m}")]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("ermission") || text(&out.stderr).contains("not permitted"));
    // env → execvp, found through $PATH.
    let out = run(shimmed(&t.rt, "env")
        .env("PATH", &path_env)
        .args(["evil", m]));
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "{}",
        text(&out.stderr)
    );
    // Python: subprocess (vfork + execve in the child), os.posix_spawn, os.execv.
    let script = r#"
import os, subprocess, sys
evil, marker = sys.argv[1], sys.argv[2]
try:
    subprocess.run([evil, marker]); print("subprocess ran")
except PermissionError:
    print("subprocess denied")
try:
    pid = os.posix_spawn(evil, [evil, marker], os.environ); os.waitpid(pid, 0); print("spawn ran")
except PermissionError:
    print("spawn denied")
try:
    os.execv(evil, [evil, marker])
except PermissionError:
    print("execv denied")
"#;
    let out = python(&t.rt, script, &[evil.as_os_str(), marker.as_os_str()]);
    let s = text(&out.stdout);
    for want in ["subprocess denied", "spawn denied", "execv denied"] {
        assert!(
            s.contains(want),
            "missing {want:?}:\n{s}\n{}",
            text(&out.stderr)
        );
    }
    // The C entry points: execl, execlp (through $PATH), fexecve, posix_spawnp.
    if let Some(okcall) = okcall() {
        let oc = okcall.to_str().unwrap();
        for args in [
            vec!["execl", e, m],
            vec!["execlp", "evil", m],
            vec!["fexecve", e, m],
            vec!["spawnp", "evil", m],
        ] {
            let out = run(shimmed(&t.rt, oc).env("PATH", &path_env).args(&args));
            assert!(
                text(&out.stdout).contains("errno=1"),
                "{args:?}: {} {}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
    }
    // vfork: the refused exec happens in a child sharing the parent's memory; afterwards the
    // parent's own checks still work.
    // Both when the child's exec is refused and when it succeeds (the child's image is then
    // replaced in the middle of the shared memory's life).
    if let Some(okcall) = okcall() {
        for (prog, exit) in [(evil.as_path(), 1), (Path::new("/bin/true"), 0)] {
            let out = run(shimmed(&t.rt, okcall.to_str().unwrap())
                .arg("vfork")
                .arg(prog)
                .arg(&t.secret));
            assert_eq!(
                text(&out.stdout),
                format!("child exit={exit} parent open failed errno=1\n"),
                "{}",
                text(&out.stderr)
            );
        }
    }
    assert!(!marker.exists(), "the blocked program ran");
    // Every question named the resolved program, whatever the caller passed.
    for f in d.frames() {
        if let Req::Exec { path, .. } = &f.req
            && path.ends_with(b"/evil")
        {
            assert_eq!(path, bytes(&evil));
        }
    }
    // An allowed program still runs, with its arguments intact.
    let out = run(shimmed(&t.rt, "sh").args(["-c", "exec echo still-works"]));
    assert_eq!(text(&out.stdout), "still-works\n");
}

#[test]
fn system_and_popen_are_judged_as_sh_dash_c() {
    skip_if_installed!();
    let t = tree();
    let evil = evil(&t);
    // An argv rule: the table cannot express it, so every exec asks.
    let mut b = TableBuilder::new(1);
    b.fail_closed(true).policy(Kind::Exec, Action::Ask);
    support::publish(&t.rt, &b);
    let d = FakeDaemon::start(
        &t.rt,
        Behaviour::Judge(Box::new(|f| match &f.req {
            // What `sh -c '…evil…'` would run.
            Req::Exec { argv, .. }
                if argv.first().is_some_and(|a| a == b"sh")
                    && argv.iter().any(|a| a.windows(4).any(|w| w == b"evil")) =>
            {
                EPERM
            }
            _ => 0,
        })),
    );
    let marker = t.root.join("marker");
    let cmd = format!("{} {}", evil.display(), marker.display());
    let out = python(
        &t.rt,
        "import os,sys; print('status', os.system(sys.argv[1]))",
        &[std::ffi::OsStr::new(&cmd)],
    );
    assert!(
        text(&out.stdout).contains("status -1"),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let asked = d.frames();
    let f = asked
        .iter()
        .find(|f| matches!(&f.req, Req::Exec { path, .. } if path == b"/bin/sh"))
        .expect("system() asked about /bin/sh");
    let Req::Exec { argv, .. } = &f.req else {
        unreachable!()
    };
    assert_eq!(
        argv,
        &[b"sh".to_vec(), b"-c".to_vec(), cmd.clone().into_bytes()]
    );
    if let Some(okcall) = okcall() {
        let oc = okcall.to_str().unwrap();
        let out = run(shimmed(&t.rt, oc).args(["popen", &cmd]));
        assert!(
            text(&out.stdout).contains("popen failed errno=1"),
            "{}",
            text(&out.stdout)
        );
        let out = run(shimmed(&t.rt, oc).args(["system", &cmd]));
        assert!(
            text(&out.stdout).contains("system failed errno=1"),
            "{}",
            text(&out.stdout)
        );
        let out = run(shimmed(&t.rt, oc).args(["popen", "echo fine"]));
        assert!(
            text(&out.stdout).contains("popen read=fine"),
            "{}",
            text(&out.stdout)
        );
    }
    assert!(!marker.exists(), "the blocked command ran");
}

#[test]
fn execl_family_passes_long_argument_lists_and_envp() {
    skip_if_installed!();
    let Some(okcall) = okcall() else {
        eprintln!("skipped: no C compiler");
        return;
    };
    let t = tree();
    // Every exec asks (and is allowed): the arguments must survive the trampolines.
    let mut b = TableBuilder::new(1);
    b.policy(Kind::Exec, Action::Ask);
    support::publish(&t.rt, &b);
    let d = FakeDaemon::start(&t.rt, Behaviour::Judge(Box::new(|_| 0)));
    let oc = okcall.to_str().unwrap();
    let out = run(shimmed(&t.rt, oc).arg("execl9"));
    assert_eq!(text(&out.stdout), "a1 a2 a3 a4 a5 a6 a7 a8 a9\n");
    let out = run(shimmed(&t.rt, oc).args(["execle", "/bin/sh"]));
    assert_eq!(text(&out.stdout), "bar:x0:x1:x2:x3:x4\n");
    let out = run(shimmed(&t.rt, oc).args(["execlp", "echo", "via-path"]));
    assert_eq!(text(&out.stdout), "via-path\n");
    let frames = d.frames();
    let argv9: Vec<Vec<u8>> = ["echo", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert!(
        frames.iter().any(|f| f.req
            == Req::Exec {
                path: b"/bin/echo".to_vec(),
                argv: argv9.clone()
            }),
        "{frames:?}"
    );
}

#[test]
fn connect_and_sendto_to_blocked_destinations_fail_with_eperm() {
    skip_if_installed!();
    let t = tree();
    let blocked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (bp, op, up) = (
        blocked.local_addr().unwrap().port(),
        open.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let mut b = TableBuilder::new(1);
    b.fail_closed(true);
    let lo = "127.0.0.1".parse().unwrap();
    b.net(Kind::Connect.bit(), Action::Ask, lo, 32, bp..=bp)
        .unwrap();
    b.net(Kind::Send.bit(), Action::Ask, lo, 32, up..=up)
        .unwrap();
    support::publish(&t.rt, &b);
    let d = FakeDaemon::start(
        &t.rt,
        Behaviour::Judge(Box::new(move |f| {
            if f.port() == Some(bp) || f.port() == Some(up) {
                EPERM
            } else {
                0
            }
        })),
    );
    let script = r#"
import socket, sys
bp, op, up = map(int, sys.argv[1:4])
try:
    socket.create_connection(("127.0.0.1", bp), timeout=5); print("blocked port connected")
except PermissionError as e:
    print("connect denied", e.errno)
socket.create_connection(("127.0.0.1", op), timeout=5); print("open port connected")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", ("127.0.0.1", up)); print("udp sent")
except PermissionError as e:
    print("sendto denied", e.errno)
u.sendto(b"x", ("127.0.0.1", op)); print("other udp sent")
"#;
    let args = [bp.to_string(), op.to_string(), up.to_string()];
    let out = python(
        &t.rt,
        script,
        &args.iter().map(std::ffi::OsStr::new).collect::<Vec<_>>(),
    );
    let s = text(&out.stdout);
    for want in [
        "connect denied 1",
        "open port connected",
        "sendto denied 1",
        "other udp sent",
    ] {
        assert!(
            s.contains(want),
            "missing {want:?}:\n{s}\n{}",
            text(&out.stderr)
        );
    }
    // Only the protected destinations were asked about.
    let ports: Vec<_> = d.frames().iter().filter_map(Frame::port).collect();
    assert!(ports.iter().all(|p| *p == bp || *p == up), "{ports:?}");
    assert!(ports.contains(&bp) && ports.contains(&up));
}

#[test]
fn inotify_watch_of_a_protected_path_fails() {
    skip_if_installed!();
    let t = tree();
    support::publish(&t.rt, &file_table(&t, true));
    let _d = FakeDaemon::start(&t.rt, file_judge(&t));
    let script = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
for p in sys.argv[1:]:
    wd = libc.inotify_add_watch(fd, p.encode(), 0x2)  # IN_MODIFY
    print(p, "wd" if wd >= 0 else "errno=%d" % ctypes.get_errno())
"#;
    let out = python(&t.rt, script, &[t.secret.as_os_str(), t.public.as_os_str()]);
    let s = text(&out.stdout);
    assert!(
        s.contains(&format!("{} errno=1", t.secret.display())),
        "{s}"
    );
    assert!(s.contains(&format!("{} wd", t.public.display())), "{s}");
}

#[test]
fn without_a_daemon_the_fail_mode_decides_at_once() {
    skip_if_installed!();
    for (fail_closed, secret_readable) in [(true, false), (false, true)] {
        let t = tree();
        support::publish(&t.rt, &file_table(&t, fail_closed));
        // No daemon, no socket.
        let (out, took) = run_limited(
            shimmed(&t.rt, "cat").arg(&t.secret).arg(&t.public),
            Duration::from_secs(10),
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(text(&out.stdout).contains("TOP SECRET"), secret_readable);
        assert!(
            text(&out.stdout).contains("public"),
            "unprotected files always work"
        );
    }
}

#[test]
fn a_daemon_that_never_answers_costs_one_timeout_then_the_fail_mode() {
    skip_if_installed!();
    for (fail_closed, secret_readable) in [(true, false), (false, true)] {
        let t = tree();
        support::publish(&t.rt, &file_table(&t, fail_closed));
        let d = FakeDaemon::start(&t.rt, Behaviour::Silent);
        // Three protected opens: the first waits 200 ms, the others fail at once (degraded).
        let (out, took) = run_limited(
            shimmed(&t.rt, "cat").args([&t.secret, &t.secret, &t.secret, &t.public]),
            Duration::from_secs(10),
        );
        assert!(took >= Duration::from_millis(200), "took {took:?}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert_eq!(text(&out.stdout).contains("TOP SECRET"), secret_readable);
        assert!(text(&out.stdout).contains("public"));
        assert!(!d.frames().is_empty(), "the question was sent");
    }
}

#[test]
fn a_daemon_that_answers_garbage_gets_the_fail_mode_without_waiting() {
    skip_if_installed!();
    let t = tree();
    support::publish(&t.rt, &file_table(&t, true));
    let _d = FakeDaemon::start(&t.rt, Behaviour::Garbage);
    let (out, took) = run_limited(
        shimmed(&t.rt, "cat").arg(&t.secret).arg(&t.public),
        Duration::from_secs(10),
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!text(&out.stdout).contains("TOP SECRET"));
    assert!(text(&out.stderr).contains("Operation not permitted"));
    assert!(text(&out.stdout).contains("public"));
}

#[test]
fn eight_threads_and_a_fork_all_get_their_own_verdicts() {
    skip_if_installed!();
    let t = tree();
    support::publish(&t.rt, &file_table(&t, true));
    let _d = FakeDaemon::start(&t.rt, file_judge(&t));
    let script = r#"
import os, sys, threading
secret, public = sys.argv[1], sys.argv[2]
res = {"denied": 0, "ok": 0, "wrong": 0}
lock = threading.Lock()
def work():
    for _ in range(25):
        try:
            open(secret).read(); r = "wrong"
        except PermissionError:
            r = "denied"
        with lock: res[r] += 1
        try:
            r = "ok" if open(public).read() == "public\n" else "wrong"
        except Exception:
            r = "wrong"
        with lock: res[r] += 1
ts = [threading.Thread(target=work) for _ in range(8)]
for th in ts: th.start()
pid = os.fork()
if pid == 0:
    # A child forked while other threads were mid-question gets a fresh connection.
    try:
        open(secret); os._exit(1)
    except PermissionError:
        pass
    os._exit(0 if open(public).read() == "public\n" else 2)
for th in ts: th.join()
_, st = os.waitpid(pid, 0)
print(res["denied"], res["ok"], res["wrong"], os.waitstatus_to_exitcode(st))
"#;
    let out = python(&t.rt, script, &[t.secret.as_os_str(), t.public.as_os_str()]);
    assert_eq!(text(&out.stdout), "200 200 0 0\n", "{}", text(&out.stderr));
}

#[test]
fn a_reloaded_table_takes_effect_in_a_running_process() {
    skip_if_installed!();
    let t = tree();
    let a = t.root.join("a.txt");
    let b = t.root.join("b.txt");
    std::fs::write(&a, "a").unwrap();
    std::fs::write(&b, "b").unwrap();
    let protect = |p: &Path, generation| {
        let mut tb = TableBuilder::new(generation);
        tb.fail_closed(true);
        tb.path(Kind::Open.bit(), Action::Ask, MatchType::Exact, bytes(p))
            .unwrap();
        tb
    };
    support::publish(&t.rt, &protect(&a, 1));
    // The daemon denies whatever it is asked about: what is asked is the table's doing.
    let _d = FakeDaemon::start(&t.rt, Behaviour::Judge(Box::new(|_| EPERM)));
    let script = r#"
import sys
def attempt(p):
    try:
        open(p).read(); return "ok"
    except PermissionError:
        return "denied"
print(attempt(sys.argv[1]), attempt(sys.argv[2]), flush=True)
sys.stdin.readline()
print(attempt(sys.argv[1]), attempt(sys.argv[2]), flush=True)
"#;
    let mut child = shimmed(&t.rt, python3())
        .arg("-c")
        .arg(script)
        .arg(&a)
        .arg(&b)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "denied ok");
    support::publish(&t.rt, &protect(&b, 2));
    writeln!(child.stdin.take().unwrap()).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "ok denied");
    assert!(child.wait().unwrap().success());
}

#[test]
fn reports_never_wait_for_the_daemon() {
    skip_if_installed!();
    let t = tree();
    let logs = t.root.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("l.txt"), "log").unwrap();
    let mut b = TableBuilder::new(1);
    b.fail_closed(true);
    b.path(
        Kind::Open.bit(),
        Action::Report,
        MatchType::Prefix,
        &dir_prefix(&logs),
    )
    .unwrap();
    support::publish(&t.rt, &b);
    // A daemon that never answers: a report must not care.
    let d = FakeDaemon::start(&t.rt, Behaviour::Silent);
    let script = format!(
        "{STATS_PY}\nimport sys\nfor _ in range(50): open(sys.argv[1]).read()\nprint(stats())"
    );
    let (out, took) = run_limited(
        shimmed(&t.rt, python3())
            .arg("-c")
            .arg(&script)
            .arg(logs.join("l.txt")),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let s = text(&out.stdout);
    assert!(
        s.contains("'asked': 0") && s.contains("'reported': 50"),
        "{s}"
    );
    // Give the fake daemon a moment to drain its socket.
    std::thread::sleep(Duration::from_millis(100));
    let frames = d.frames();
    assert_eq!(frames.len(), 50, "{frames:?}");
    assert!(frames.iter().all(|f| !f.want_verdict));
    // seq grows by one per frame: the daemon can count what was dropped.
    let seqs: Vec<u32> = frames.iter().map(|f| f.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[test]
fn without_a_table_every_call_asks() {
    skip_if_installed!();
    let t = tree();
    let d = FakeDaemon::start(&t.rt, Behaviour::Judge(Box::new(|_| 0)));
    let out = run(shimmed(&t.rt, "cat").arg(&t.public));
    assert_eq!(text(&out.stdout), "public\n");
    let frames = d.frames();
    assert!(
        frames
            .iter()
            .any(|f| f.want_verdict && f.path() == Some(bytes(&t.public))),
        "{frames:?}"
    );
}

#[test]
fn rules_about_one_program_make_only_that_program_ask() {
    skip_if_installed!();
    let t = tree();
    // "Every open by python3 may be blocked": python asks about each open, cat about none.
    let py = std::fs::canonicalize(python3_path()).unwrap();
    let md = std::fs::metadata(&py).unwrap();
    let mut b = TableBuilder::new(1);
    b.exe_inode(Kind::Open.bit(), Action::Ask, md.dev(), md.ino())
        .unwrap();
    support::publish(&t.rt, &b);
    let d = FakeDaemon::start(&t.rt, Behaviour::Judge(Box::new(|_| 0)));
    let out = run(shimmed(&t.rt, "cat").arg(&t.public));
    assert_eq!(text(&out.stdout), "public\n");
    assert!(d.frames().is_empty(), "{:?}", d.frames());
    let script = format!("{STATS_PY}\nimport sys; open(sys.argv[1]).read(); print(stats())");
    let out = python(&t.rt, &script, &[t.public.as_os_str()]);
    assert!(
        text(&out.stdout).contains("'asked': 1"),
        "{}",
        text(&out.stdout)
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let frames = d.frames();
    assert!(
        frames
            .iter()
            .any(|f| f.want_verdict && f.path() == Some(bytes(&t.public))),
        "{frames:?}"
    );
}

fn python3_path() -> PathBuf {
    let p = python3();
    if p.starts_with('/') {
        return PathBuf::from(p);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(p))
        .find(|c| c.exists())
        .expect("python3 in PATH")
}
