//! oknekd against a hostile agent: the real daemon binary, the real `oknek` CLI, the shipped rule
//! pack, the running kernel. The agent is uid 65534 — declared by uid (every process it starts is
//! judged by the fanotify tier) or launched with `oknek run --agent demo` (seccomp tier) — and it
//! tries every way around R1.ssh it can think of, attacks the daemon's sockets and process, and
//! floods it. Every refusal must be an `EPERM` from the kernel, every attempt that reached the
//! daemon must be in the signed evidence, and `oknek verify` must pass at the end.
//!
//! Needs root (fanotify, seccomp user notification, switching to uid 65534) and gcc (a static
//! helper that makes raw system calls); as an ordinary user every test prints
//! "skipped: needs root …". The tests take turns (one daemon at a time).

mod common;

use std::ffi::OsStr;
use std::os::fd::RawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `oknek status` must answer within this, even under attack.
const RESPONSIVE: Duration = Duration::from_secs(3);

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// (1) The key by every name an agent can spell, in both tiers; root still reads it.
#[test]
fn protected_key_is_refused_by_every_name_in_both_tiers() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let home = FakeHome::new("names");
    let work = home.workdir();
    let mut d = Daemon::start(&shipped_rules(), NOBODY_AGENT);
    let key = s(&home.key).to_owned();
    let homedir = s(&home.home).to_owned();
    let secret = home.secret.clone();

    // The agent makes the other names itself: link(2) and symlink(2) are not judged, and none of
    // these names matches the R1.ssh globs.
    let hard = work.join("notes-backup");
    let sym = work.join("innocent-link");
    let dirlink = work.join("dotssh");
    for args in [
        vec![key.as_str(), s(&hard)],
        vec!["-s", key.as_str(), s(&sym)],
        vec!["-s", s(&home.ssh), s(&dirlink)],
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let o = run(&mut agent_cmd("ln", &args), CHILD_TIMEOUT);
        assert!(o.status.success(), "agent ln {args:?}: {}", text(&o));
    }

    let names: Vec<(&str, String, &str)> = vec![
        ("direct", key.clone(), "/"),
        ("hard link", s(&hard).to_owned(), "/"),
        ("symlink", s(&sym).to_owned(), "/"),
        (
            "symlinked directory",
            format!("{}/id_ed25519", s(&dirlink)),
            "/",
        ),
        ("/proc/self/root", format!("/proc/self/root{key}"), "/"),
        ("dot-dot", format!("{homedir}/.ssh/../.ssh/id_ed25519"), "/"),
        ("dot-dot from /tmp", format!("/tmp/..{key}"), "/"),
        ("doubled slashes", key.replace('/', "//"), "/"),
        ("relative", ".ssh/id_ed25519".to_owned(), homedir.as_str()),
        (
            "/proc/self/cwd",
            "/proc/self/cwd/.ssh/id_ed25519".to_owned(),
            homedir.as_str(),
        ),
    ];
    let mut attempts_fanotify = 0;
    let mut attempts_seccomp = 0;
    for (label, path, cwd) in &names {
        let mut cat = agent_cmd("cat", &[os(path)]);
        cat.current_dir(cwd);
        let o = run(&mut cat, CHILD_TIMEOUT);
        assert_refused(&format!("declared agent, {label}: cat {path}"), &o, &secret);
        attempts_fanotify += 1;
        let o = d.run_agent("demo", Path::new(cwd), &[os("cat"), os(path)]);
        assert_refused(&format!("oknek run, {label}: cat {path}"), &o, &secret);
        attempts_seccomp += 1;
    }

    // O_PATH (which opens nothing) and then a real open through /proc/self/fd, by a static
    // binary making raw system calls.
    let helper = &bins().helper;
    let o = run(
        &mut agent_cmd(helper, &[os("reopen"), os(&key)]),
        CHILD_TIMEOUT,
    );
    assert_refused("declared agent, O_PATH + /proc/self/fd reopen", &o, &secret);
    attempts_fanotify += 1;
    let o = d.run_agent(
        "demo",
        Path::new("/"),
        &[helper.as_os_str(), os("reopen"), os(&key)],
    );
    assert_refused("oknek run, O_PATH + /proc/self/fd reopen", &o, &secret);
    attempts_seccomp += 1;

    // Root is no agent: it reads the key by its name and by the agent's hard link.
    for path in [key.as_str(), s(&hard)] {
        let o = run(Command::new("cat").arg(path), CHILD_TIMEOUT);
        assert_read(&format!("root cat {path}"), &o, &secret);
    }

    // The agent renames ~/.ssh while the daemon runs: the mark is on the inode, not the name.
    let ssh2 = home.home.join(".ssh2");
    let o = run(
        &mut agent_cmd("mv", &[home.ssh.as_os_str(), ssh2.as_os_str()]),
        CHILD_TIMEOUT,
    );
    assert!(o.status.success(), "agent mv ~/.ssh ~/.ssh2: {}", text(&o));
    let renamed = ssh2.join("id_ed25519");
    let o = run(&mut agent_cmd("cat", &[renamed.as_os_str()]), CHILD_TIMEOUT);
    assert_refused("declared agent, after renaming ~/.ssh", &o, &secret);
    let o = run(
        &mut agent_cmd(helper, &[os("read"), renamed.as_os_str()]),
        CHILD_TIMEOUT,
    );
    assert_refused(
        "declared agent (static), after renaming ~/.ssh",
        &o,
        &secret,
    );
    attempts_fanotify += 2;
    let o = d.run_agent("demo", Path::new("/"), &[os("cat"), renamed.as_os_str()]);
    assert_refused("oknek run, after renaming ~/.ssh", &o, &secret);
    let o = d.run_agent(
        "demo",
        Path::new("/"),
        &[helper.as_os_str(), os("read"), renamed.as_os_str()],
    );
    assert_refused("oknek run (static), after renaming ~/.ssh", &o, &secret);
    attempts_seccomp += 2;
    let o = run(Command::new("cat").arg(&renamed), CHILD_TIMEOUT);
    assert_read("root cat after the rename", &o, &secret);

    d.assert_serving(RESPONSIVE);
    d.stop();

    // Every attempt is evidence, recorded under the protected path whatever name was used.
    let events = d.events();
    let ssh = bundles(&events, "R1.ssh", "block");
    for (mech, attempts) in [
        ("fanotify", attempts_fanotify),
        ("seccomp", attempts_seccomp),
    ] {
        let mine: Vec<&&Value> = ssh
            .iter()
            .filter(|e| mechanism(e) == mech && uid_of(e) == Some(AGENT_UID.into()))
            .collect();
        assert!(
            mine.len() >= attempts,
            "{mech}: {} R1.ssh blocks recorded for {attempts} attempts",
            mine.len()
        );
        for e in &mine {
            assert_eq!(path_of(e), key, "{mech}: judged as the protected file: {e}");
        }
    }
    assert!(
        !ssh.iter().any(|e| uid_of(e) == Some(0)),
        "root's reads are not agent events"
    );
    d.assert_verifies();
}

/// (2) A path rule on exec: every name of the file is caught, raw `execve` from a static binary
/// too; a copy is another file and is not (that needs a content rule: see the next test).
#[test]
fn exec_of_a_blocked_binary_by_every_name_and_raw_execve_but_not_a_copy() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let dir = scratch("exec", true);
    let forbidden = dir.path().join("forbidden-tool");
    std::fs::copy(&bins().helper, &forbidden).unwrap();
    give_to_agent(&forbidden);
    set_mode(&forbidden, 0o755);
    let rules = rules_with(&format!(
        "oknek_rules: 1\nrules:\n  - id: ADV.exec\n    title: Agent executes the forbidden tool\n    \
         kind: exec\n    match:\n      path: {}\n    action: block\n    severity: high\n",
        s(&forbidden)
    ));
    let mut d = Daemon::start(rules.path(), NOBODY_AGENT);
    let helper = &bins().helper;

    // The agent's own other names for the tool.
    let hard = dir.path().join("hard-linked");
    let sym = dir.path().join("sym-linked");
    let copy = dir.path().join("copied");
    for (prog, args) in [
        ("ln", vec![s(&forbidden), s(&hard)]),
        ("ln", vec!["-s", s(&forbidden), s(&sym)]),
        ("cp", vec![s(&forbidden), s(&copy)]),
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let o = run(&mut agent_cmd(prog, &args), CHILD_TIMEOUT);
        assert!(o.status.success(), "agent {prog} {args:?}: {}", text(&o));
    }

    let o = run(Command::new(&forbidden).arg("id"), CHILD_TIMEOUT);
    assert_read("root runs the tool", &o, "helper-ran uid=0");

    let no_run = |what: &str, o: &std::process::Output| {
        assert_refused(what, o, "helper-ran");
    };
    let mut fanotify_attempts = 0;
    let mut seccomp_attempts = 0;
    for (label, path) in [
        ("path", &forbidden),
        ("symlink", &sym),
        ("hard link", &hard),
    ] {
        let o = run(
            &mut agent_cmd(helper, &[os("exec"), path.as_os_str(), os("id")]),
            CHILD_TIMEOUT,
        );
        no_run(&format!("declared agent, raw execve by {label}"), &o);
        assert!(text(&o).contains("execve: errno=1"), "{}", text(&o));
        fanotify_attempts += 1;
        let o = d.run_agent(
            "demo",
            Path::new("/"),
            &[helper.as_os_str(), os("exec"), path.as_os_str(), os("id")],
        );
        no_run(&format!("oknek run, raw execve by {label}"), &o);
        assert!(text(&o).contains("execve: errno=1"), "{}", text(&o));
        seccomp_attempts += 1;
    }
    // Through libc and PATH-less env(1), and as the command oknek run itself starts.
    let o = run(
        &mut agent_cmd("env", &[forbidden.as_os_str(), os("id")]),
        CHILD_TIMEOUT,
    );
    no_run("declared agent, env forbidden-tool", &o);
    fanotify_attempts += 1;
    let o = d.run_agent("demo", Path::new("/"), &[forbidden.as_os_str(), os("id")]);
    no_run("oknek run forbidden-tool", &o);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o));
    seccomp_attempts += 1;

    // The honest limit of a path rule: a copy is another file, and it runs.
    let o = run(
        &mut agent_cmd(helper, &[os("exec"), copy.as_os_str(), os("id")]),
        CHILD_TIMEOUT,
    );
    assert_read("declared agent runs a copy", &o, "helper-ran uid=65534");
    let o = d.run_agent(
        "demo",
        Path::new("/"),
        &[helper.as_os_str(), os("exec"), copy.as_os_str(), os("id")],
    );
    assert_read("oknek run runs a copy", &o, "helper-ran uid=65534");

    d.assert_serving(RESPONSIVE);
    d.stop();
    let events = d.events();
    let blocks = bundles(&events, "ADV.exec", "block");
    let count = |mech: &str| {
        blocks
            .iter()
            .filter(|e| mechanism(e) == mech && uid_of(e) == Some(AGENT_UID.into()))
            .count()
    };
    eprintln!(
        "ADV.exec blocks: fanotify {} seccomp {}",
        count("fanotify"),
        count("seccomp")
    );
    // The hard link under `oknek run` is not the rule's path for seccomp; the kernel's exec
    // permission event on the marked inode refuses it, so it is a fanotify block.
    assert_eq!(
        count("fanotify"),
        fanotify_attempts + 1,
        "fanotify: the declared agent's attempts and the hard link under oknek run"
    );
    assert_eq!(
        count("seccomp"),
        seccomp_attempts - 1,
        "seccomp: every attempt under oknek run but the hard link"
    );
    for e in &blocks {
        assert_eq!(
            path_of(e),
            s(&forbidden),
            "recorded as the rule's file: {e}"
        );
    }
    assert!(
        !bundles(&events, "ADV.exec", "block")
            .iter()
            .any(|e| path_of(e).ends_with("copied")),
        "the copy matched nothing"
    );
    d.assert_verifies();
}

/// (2b) A rule on the executable's content (`exe_sha256`) is documented as matching every kind
/// and as kernel-enforceable, so a renamed copy of the image stays caught. Under `oknek run`
/// every open is judged by the daemon, so this is where it must hold.
#[test]
fn an_exe_sha256_rule_follows_a_renamed_copy() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let dir = scratch("image", true);
    // The helper with a tail: the same program, another image hash than the plain helper's.
    let tool = dir.path().join("tool");
    let mut bytes = std::fs::read(&bins().helper).unwrap();
    bytes.extend_from_slice(b"\0oknek-adversarial-image-tag\0");
    std::fs::write(&tool, bytes).unwrap();
    set_mode(&tool, 0o755);
    let canary = dir.path().join("canary.txt");
    std::fs::write(&canary, "CANARY-CONTENT\n").unwrap();
    set_mode(&canary, 0o644);
    let rules = rules_with(&format!(
        "oknek_rules: 1\nrules:\n  - id: ADV.image\n    title: The tool's image opens the canary\n    \
         kind: open\n    match:\n      all:\n        - exe_sha256: {}\n        - path: {}\n    \
         action: block\n",
        sha256_hex(&tool),
        s(&canary)
    ));
    let d = Daemon::start(rules.path(), NOBODY_AGENT);
    let renamed = dir.path().join("renamed-copy");
    let o = run(
        &mut agent_cmd("cp", &[tool.as_os_str(), renamed.as_os_str()]),
        CHILD_TIMEOUT,
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = d.run_agent(
        "demo",
        Path::new("/"),
        &[bins().helper.as_os_str(), os("read"), canary.as_os_str()],
    );
    assert_read("another image reads the canary", &o, "CANARY-CONTENT");
    for image in [&tool, &renamed] {
        let o = d.run_agent(
            "demo",
            Path::new("/"),
            &[image.as_os_str(), os("read"), canary.as_os_str()],
        );
        assert_refused(
            &format!("{} (same image) reads the canary", image.display()),
            &o,
            "CANARY-CONTENT",
        );
    }
}

/// A canary file and a kernel-classified block rule on opening it, scoped to `nobody-agent`.
fn scoped_canary() -> (tempfile::TempDir, std::path::PathBuf, tempfile::TempDir) {
    let dir = scratch("scoped", false);
    let canary = dir.path().join("canary.txt");
    std::fs::write(&canary, "CANARY-CONTENT\n").unwrap();
    set_mode(&canary, 0o644);
    let rules = rules_with(&format!(
        "oknek_rules: 1\nrules:\n  - id: ADV.scoped\n    title: nobody-agent opens the canary\n    \
         kind: open\n    agents: [nobody-agent]\n    match:\n      path: {}\n    action: block\n",
        s(&canary)
    ));
    (dir, canary, rules)
}

/// (2c) A block rule scoped with `agents:` is listed as kernel-enforceable; it must bind the
/// declared agent it names, not only trees launched under that name.
#[test]
fn an_agent_scoped_rule_binds_the_declared_agent() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let (_dir, canary, rules) = scoped_canary();
    let d = Daemon::start(rules.path(), NOBODY_AGENT);
    let o = d.run_agent(
        "nobody-agent",
        Path::new("/"),
        &[os("cat"), canary.as_os_str()],
    );
    assert_refused("oknek run --agent nobody-agent", &o, "CANARY-CONTENT");
    let o = run(&mut agent_cmd("cat", &[canary.as_os_str()]), CHILD_TIMEOUT);
    assert_refused("the declared agent itself", &o, "CANARY-CONTENT");
}

/// (2d) A process of a declared agent that launches `oknek run --agent OTHER` must not shed its
/// identity: its calls are still the declared agent's (else per-agent rules and an operator's
/// quarantine of the agent are one command away from void).
#[test]
fn oknek_run_does_not_change_a_declared_agents_identity() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let (_dir, canary, rules) = scoped_canary();
    let d = Daemon::start(rules.path(), NOBODY_AGENT);
    let o = d.run_agent(
        "someone-else",
        Path::new("/"),
        &[os("cat"), canary.as_os_str()],
    );
    assert_refused(
        "uid 65534 (nobody-agent) under oknek run --agent someone-else",
        &o,
        "CANARY-CONTENT",
    );
}

/// (3) The fanotify tier does not depend on the preload shim: no LD_PRELOAD, an empty
/// environment or no dynamic loader at all change nothing.
#[test]
fn unsetting_ld_preload_changes_nothing() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let home = FakeHome::new("preload");
    let mut d = Daemon::start(&shipped_rules(), NOBODY_AGENT);
    let key = home.key.as_os_str();
    let shim = Path::new(env!("CARGO_BIN_EXE_oknekd")).with_file_name("liboknek_preload.so");
    let preload = if shim.is_file() {
        shim
    } else {
        "/nonexistent/liboknek_preload.so".into()
    };

    let mut attempts = 0;
    let mut unset = agent_cmd("env", &[os("-u"), os("LD_PRELOAD"), os("cat"), key]);
    unset.env("LD_PRELOAD", &preload);
    assert_refused(
        "env -u LD_PRELOAD cat KEY",
        &run(&mut unset, CHILD_TIMEOUT),
        &home.secret,
    );
    attempts += 1;
    let mut empty = agent_cmd("env", &[os("-i"), os("/usr/bin/cat"), key]);
    empty.env("LD_PRELOAD", &preload);
    assert_refused(
        "env -i cat KEY",
        &run(&mut empty, CHILD_TIMEOUT),
        &home.secret,
    );
    attempts += 1;
    let o = run(
        &mut agent_cmd(&bins().helper, &[os("read"), key]),
        CHILD_TIMEOUT,
    );
    assert_refused("static binary, raw openat", &o, &home.secret);
    attempts += 1;
    let o = d.run_agent(
        "demo",
        Path::new("/"),
        &[os("env"), os("-u"), os("LD_PRELOAD"), os("cat"), key],
    );
    assert_refused("oknek run env -u LD_PRELOAD cat KEY", &o, &home.secret);

    d.assert_serving(RESPONSIVE);
    d.stop();
    let events = d.events();
    let ssh = bundles(&events, "R1.ssh", "block");
    let fan = ssh
        .iter()
        .filter(|e| mechanism(e) == "fanotify" && uid_of(e) == Some(AGENT_UID.into()))
        .count();
    assert!(
        fan >= attempts,
        "{fan} fanotify blocks for {attempts} attempts"
    );
    assert!(
        ssh.iter().all(|e| mechanism(e) != "preload"),
        "no shim was involved"
    );
    d.assert_verifies();
}

/// (4) The control socket: uid 65534 gets no answer (file mode) or a refusal (peer credentials,
/// when it has group root); garbage from root or the agent does not hurt the daemon.
#[test]
fn control_socket_refuses_the_agent_and_survives_garbage() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let home = FakeHome::new("control");
    let mut d = Daemon::start(&shipped_rules(), NOBODY_AGENT);
    let commands: [&[&str]; 7] = [
        &["status"],
        &["status", "--json"],
        &["reload"],
        &["agents"],
        &["allow", "1"],
        &["block", "1"],
        &["unblock", "nobody-agent"],
    ];
    for cmd in commands {
        // nobody:nogroup cannot even connect (control.sock is 0660 root:root).
        let o = d.oknek_as(AGENT_UID, AGENT_GID, cmd);
        let t = text(&o);
        assert!(!o.status.success(), "agent oknek {cmd:?} must fail: {t}");
        assert!(
            t.contains("cannot reach oknekd") && t.contains("Permission denied"),
            "agent oknek {cmd:?}: {t}"
        );
        // With group root it can connect; the daemon checks SO_PEERCRED and refuses.
        let o = d.oknek_as(AGENT_UID, 0, cmd);
        let t = text(&o);
        assert!(
            !o.status.success(),
            "agent (gid 0) oknek {cmd:?} must fail: {t}"
        );
        assert!(
            t.contains("uid 65534 may not use the control socket"),
            "agent (gid 0) oknek {cmd:?}: {t}"
        );
    }

    // Raw garbage from root, while another root connection sits idle.
    let control = d.runtime.join("control.sock");
    let idle = std::os::unix::net::UnixStream::connect(&control).unwrap();
    let deep = format!("{}{}\n", "[".repeat(5000), "]".repeat(5000));
    let garbage: Vec<Vec<u8>> = vec![
        b"garbage\n".to_vec(),
        b"\x00\xff\xfe\x01 binary\n".to_vec(),
        vec![b'x'; 5000],
        vec![b'{'; 100_000],
        br#"{"cmd":"shutdown"}"#.to_vec(),
        b"{\"cmd\":\"status\",\"x\":1}\n".to_vec(),
        b"{\"cmd\":\"allow\",\"pid\":-1}\n".to_vec(),
        b"{\"cmd\":\"block\",\"pid\":1}\n".to_vec(),
        b"{\"cmd\":\"allow\",\"pid\":4294967295}\n".to_vec(),
        b"{\"cmd\":\"unblock\",\"agent\":\"\\u0000\"}\n".to_vec(),
        deep.into_bytes(),
        b"{\"cmd\":\"sta".to_vec(),
        Vec::new(),
    ];
    for g in &garbage {
        if let Ok(reply) = stream_exchange(&control, g, Duration::from_secs(5))
            && !reply.is_empty()
        {
            let line = String::from_utf8_lossy(&reply);
            let v: Value = serde_json::from_str(line.trim())
                .unwrap_or_else(|e| panic!("answer to garbage is not JSON ({e}): {line}"));
            assert_eq!(v["ok"], false, "garbage must not succeed: {line}");
        }
        d.assert_serving(RESPONSIVE);
    }
    drop(idle);

    // Raw garbage from the agent: nobody:nogroup cannot connect; nobody:root is refused.
    let addr = oknekd::hook::sockaddr_un(&control).unwrap();
    let junk = b"\x00\xffjunk\n{\"cmd\":\"reload\"}\n".to_vec();
    let reload = b"{\"cmd\":\"reload\"}\n".to_vec();
    for gid in [AGENT_GID, 0] {
        let child = fork_as(AGENT_UID, gid, |c| {
            for (slot, bytes) in [(0, &junk), (2, &reload)] {
                let fd = raw::connect(&addr, libc::SOCK_STREAM);
                c.report[slot] = fd.min(0).into();
                if fd < 0 {
                    continue;
                }
                raw::send(fd, bytes, &[], 0);
                let mut buf = [0u8; 512];
                let n = raw::recv(fd, &mut buf, 5000);
                c.report[slot + 1] = n as i64;
                // Byte 6 of `{"ok":false` / `{"ok":true`: 'f' or 't'.
                c.report[slot + 10] = if n > 7 { i64::from(buf[6]) } else { 0 };
                raw::close(fd);
            }
        });
        let r = child.report(Duration::from_secs(20)).expect("report");
        assert_eq!(child.wait(Duration::from_secs(5)), 0);
        if gid == AGENT_GID {
            assert_eq!(r[0], -i64::from(libc::EACCES), "nobody:nogroup connects");
            assert_eq!(r[2], -i64::from(libc::EACCES), "nobody:nogroup connects");
        } else {
            for slot in [0, 2] {
                assert!(r[slot] >= 0, "nobody:root may connect");
                assert!(r[slot + 1] > 0, "and gets an answer");
                assert_eq!(r[slot + 10], i64::from(b'f'), "which is a refusal");
            }
        }
        d.assert_serving(RESPONSIVE);
    }

    // Nothing the agent sent took effect.
    let status = d.assert_serving(RESPONSIVE);
    assert_eq!(status["blocked_agents"], serde_json::json!([]), "{status}");
    let log = d.log();
    assert!(!log.contains("reloaded (oknek reload)"), "{log}");
    assert!(
        log.contains("uid 65534 may not use the control socket"),
        "{log}"
    );
    let o = run(
        &mut agent_cmd("cat", &[home.key.as_os_str()]),
        CHILD_TIMEOUT,
    );
    assert_refused("the key after the control-socket attacks", &o, &home.secret);
    d.stop();
    d.assert_verifies();
}

/// Frames uid 65534 throws at the hook socket; each kind on its own connection.
fn garbage_frames(key: &str) -> Vec<Vec<Vec<u8>>> {
    use oknek_protocol::{MAGIC, VERSION};
    let valid = frames::open(1, key, true);
    let mut kinds = Vec::new();
    // Random bytes of random lengths, and random bytes behind a valid header.
    kinds.push(
        (0..200u64)
            .map(|i| frames::noise(i + 1, 1 + (i as usize * 41) % 8192))
            .collect(),
    );
    kinds.push(
        (0..200u64)
            .map(|i| {
                let op = [1u16, 2, 3, 4, 5, 64][i as usize % 6];
                let body = frames::noise(i + 1000, (i as usize * 37) % 8000);
                frames::raw(MAGIC, VERSION, op, i as u32, 1, &body)
            })
            .collect(),
    );
    // Every truncation of a valid header and frame.
    kinds.push((1..valid.len()).map(|n| valid[..n].to_vec()).collect());
    // Bad magic, version, op; unterminated strings; huge counts and lengths.
    kinds.push(vec![
        frames::raw(0xdead_beef, VERSION, 2, 1, 1, b"/etc/hostname\0"),
        frames::raw(MAGIC, 0, 2, 1, 1, b"\0\0\0\0\0\0\0\0\0\0\0\0/x\0"),
        frames::raw(MAGIC, u16::MAX, 2, 1, 1, b""),
        frames::raw(MAGIC, VERSION, 999, 1, 1, b""),
        frames::raw(MAGIC, VERSION, 2, 1, 1, &[b'A'; 2000]),
        frames::raw(
            MAGIC,
            VERSION,
            1,
            1,
            1,
            &[0xff, 0xff, 0xff, 0xff, b'/', 0, b'x', 0],
        ),
        frames::raw(MAGIC, VERSION, 1, 1, 1, &1_000_000u32.to_le_bytes()),
        frames::raw(MAGIC, VERSION, 3, 1, 1, &u32::MAX.to_le_bytes()),
        frames::raw(MAGIC, VERSION, 4, 1, 1, &[0xff; 12]),
        frames::raw(MAGIC, VERSION, 64, 1, 1, b"no-nul-and-no-fd"),
        frames::raw(
            MAGIC,
            VERSION,
            5,
            1,
            1,
            b"\x01\x00\x00\x00/proc/self/fd/0\0",
        ),
    ]);
    // Longer than the daemon's 8192-byte buffer.
    kinds.push(vec![
        vec![b'O'; oknek_protocol::MAX_FRAME + 1],
        vec![0; 65_536],
        frames::raw(MAGIC, VERSION, 2, 1, 1, &vec![b'/'; 100_000]),
    ]);
    kinds
}

/// What the hook-socket child reports, by slot.
mod slot {
    /// The valid probe frame's reply errno after each garbage kind (EPERM: still judging).
    pub const PROBE: usize = 0;
    /// Replies to RegisterSeccomp with bogus listeners (-1: no reply).
    pub const BOGUS_REGISTER: usize = 8;
    pub const BOGUS_COUNT: usize = 10;
    /// Frames that carried a stray fd.
    pub const STRAY_FDS_SENT: usize = 24;
    pub const ZERO_LENGTH: usize = 25;
}

/// Sends `frame` on a new connection and returns the reply's errno (`-1`: no reply).
fn probe(addr: &libc::sockaddr_un, frame: &[u8], fds: &[RawFd]) -> i64 {
    let fd = raw::connect(addr, libc::SOCK_SEQPACKET);
    if fd < 0 {
        return -1000 + i64::from(fd);
    }
    raw::send(fd, frame, fds, 0);
    let mut buf = [0u8; 64];
    let n = raw::recv(fd, &mut buf, 10_000);
    raw::close(fd);
    if n != 16 {
        return -1;
    }
    frames::decode_reply(&buf[..16]).map_or(-2, |r| i64::from(r.errno))
}

/// (5) Forged and garbage frames, stray fds and fake seccomp listeners on the hook socket.
#[test]
fn hook_socket_survives_garbage_frames_stray_fds_and_fake_listeners() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let home = FakeHome::new("hook");
    let mut d = Daemon::start(&shipped_rules(), NOBODY_AGENT);
    let key = s(&home.key).to_owned();
    let addr = oknekd::hook::sockaddr_un(&d.runtime.join("oknek.sock")).unwrap();
    let kinds = garbage_frames(&key);
    assert!(kinds.len() <= slot::BOGUS_REGISTER, "report slots overlap");
    let valid = frames::open(7, &key, true);
    let bogus_agent_names: [&[u8]; 3] = [b"../../etc", b"", &[b'a'; 200]];
    let registers: Vec<Vec<u8>> = (0..slot::BOGUS_COUNT as u32)
        .map(|i| frames::register(i, b"fake-run"))
        .chain(bogus_agent_names.iter().map(|n| frames::register(99, n)))
        .collect();
    let fds_before = d.fd_count();

    let child = fork_as(AGENT_UID, AGENT_GID, |c| {
        for (i, kind) in kinds.iter().enumerate() {
            let fd = raw::connect(&addr, libc::SOCK_SEQPACKET);
            if fd >= 0 {
                for frame in kind {
                    raw::send(fd, frame, &[], libc::MSG_DONTWAIT);
                }
                raw::close(fd);
            }
            // The daemon still judges a valid question from the same uid.
            c.report[slot::PROBE + i] = probe(&addr, &valid, &[]);
        }
        // Stray fds on ordinary frames: they must be closed, not kept.
        let null = raw::open(c"/dev/null", libc::O_RDONLY);
        let efd = raw::eventfd();
        let [pr, pw] = raw::pipe();
        let root = raw::open(c"/", libc::O_PATH);
        let fd = raw::connect(&addr, libc::SOCK_SEQPACKET);
        for stray in [null, efd, pr, pw, root, fd] {
            if raw::send(fd, &valid, &[stray, stray], 0) > 0 {
                c.report[slot::STRAY_FDS_SENT] += 2;
            }
            let mut buf = [0u8; 64];
            raw::recv(fd, &mut buf, 5000);
        }
        raw::close(fd);
        // RegisterSeccomp with things that are not a seccomp listener.
        let other = raw::connect(&addr, libc::SOCK_SEQPACKET);
        let bogus: [&[RawFd]; slot::BOGUS_COUNT] = [
            &[efd],
            &[pr],
            &[pw],
            &[null],
            &[root],
            &[other],
            &[],
            &[efd, pr],
            &[efd, efd, efd],
            &[raw::eventfd()],
        ];
        for (i, fds) in bogus.iter().enumerate() {
            c.report[slot::BOGUS_REGISTER + i] = probe(&addr, &registers[i], fds);
        }
        for (i, frame) in registers[slot::BOGUS_COUNT..].iter().enumerate() {
            c.report[slot::BOGUS_REGISTER + slot::BOGUS_COUNT + i] = probe(&addr, frame, &[efd]);
        }
        // A zero-length message, then the probe again.
        let fd = raw::connect(&addr, libc::SOCK_SEQPACKET);
        raw::send(fd, &[], &[], 0);
        raw::close(fd);
        c.report[slot::ZERO_LENGTH] = probe(&addr, &valid, &[]);
    });
    let r = child.report(Duration::from_secs(60)).expect("child report");
    assert_eq!(
        child.wait(Duration::from_secs(10)),
        0,
        "the child ran as uid 65534"
    );

    for (i, &errno) in r[slot::PROBE..slot::PROBE + kinds.len()].iter().enumerate() {
        assert_eq!(
            errno,
            i64::from(libc::EPERM),
            "after garbage kind {i} a valid question about the key must still be refused"
        );
    }
    assert_eq!(r[slot::ZERO_LENGTH], i64::from(libc::EPERM));
    assert!(r[slot::STRAY_FDS_SENT] >= 10, "stray fds were sent: {r:?}");
    let bogus = &r[slot::BOGUS_REGISTER..slot::BOGUS_REGISTER + slot::BOGUS_COUNT + 3];
    eprintln!("errnos of the bogus registrations: {bogus:?}");
    for i in 0..slot::BOGUS_COUNT + bogus_agent_names.len() {
        let errno = r[slot::BOGUS_REGISTER + i];
        assert!(
            errno > 0,
            "RegisterSeccomp #{i} with no genuine listener must be refused, got errno {errno} \
             (0 = accepted, -1 = no answer)"
        );
    }
    // Nothing the agent handed over stayed in the daemon.
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.fd_count() > fds_before + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.fd_count() <= fds_before + 4,
        "the daemon kept fds the agent sent: {} before, {} after",
        fds_before,
        d.fd_count()
    );
    let status = d.assert_serving(RESPONSIVE);
    assert!(
        status["counters"]["dropped_frames"].as_u64().is_some(),
        "{status}"
    );
    let o = run(
        &mut agent_cmd("cat", &[home.key.as_os_str()]),
        CHILD_TIMEOUT,
    );
    assert_refused("the key after the hook-socket garbage", &o, &home.secret);
    let o = d.run_agent("demo", Path::new("/"), &[os("cat"), home.key.as_os_str()]);
    assert_refused("oknek run after the hook-socket garbage", &o, &home.secret);
    d.stop();
    d.assert_verifies();
}

/// (5b) Genuine seccomp listeners (anyone can make one for itself) and connections are capped per
/// uid: the agent cannot exhaust the daemon's fds, other users keep `oknek run`, and the agent's
/// own `oknek run` fails closed while it hogs its share.
#[test]
fn hook_socket_caps_connections_and_listeners_per_uid() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let home = FakeHome::new("caps");
    let open_dir = scratch("caps", false);
    let public = open_dir.path().join("public.txt");
    std::fs::write(&public, "PUBLIC-CONTENT\n").unwrap();
    set_mode(&public, 0o644);
    let mut d = Daemon::start(&shipped_rules(), NOBODY_AGENT);
    let addr = oknekd::hook::sockaddr_un(&d.runtime.join("oknek.sock")).unwrap();
    let register = frames::register(1, b"self-made");
    let fds_before = d.fd_count();
    // The kernel allows one listener per process (per filter chain): the agent forks a process
    // for each, which registers it and stays alive to keep it open.
    const LISTENERS: usize = 160;
    const CONNECTIONS: usize = 1500;

    let child = fork_as(AGENT_UID, AGENT_GID, |c| {
        raw::raise_nofile();
        let [results_r, results_w] = raw::pipe();
        let [hold_r, hold_w] = raw::pipe();
        for _ in 0..LISTENERS {
            // SAFETY: the grandchild only makes system calls and leaves with _exit.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                c.report[3] += 1;
                continue;
            }
            if pid > 0 {
                continue;
            }
            raw::close(results_r);
            raw::close(hold_w);
            let l = raw::own_seccomp_listener();
            let mut outcome = b'3';
            if l >= 0 {
                let fd = raw::connect(&addr, libc::SOCK_SEQPACKET);
                raw::send(fd, &register, &[l], 0);
                let mut buf = [0u8; 64];
                let n = raw::recv(fd, &mut buf, 10_000);
                raw::close(fd);
                outcome = match frames::decode_reply(&buf[..n.max(0) as usize]) {
                    Some(r) if r.errno == 0 => b'0',
                    Some(_) => b'1',
                    None => b'2',
                };
            }
            // SAFETY: one byte from a local; then wait for the hold pipe to close; exit.
            unsafe {
                libc::write(results_w, (&raw const outcome).cast(), 1);
                libc::close(results_w);
                let mut b = 0u8;
                libc::read(hold_r, (&raw mut b).cast(), 1);
                libc::_exit(0);
            }
        }
        raw::close(results_w);
        raw::close(hold_r);
        let mut b = 0u8;
        // SAFETY: reading single bytes into a local until every grandchild reported.
        while unsafe { libc::read(results_r, (&raw mut b).cast(), 1) } == 1 {
            match b {
                b'0' => c.report[0] += 1,
                b'1' => c.report[1] += 1,
                b'2' => c.report[2] += 1,
                _ => c.report[3] += 1,
            }
        }
        // Then as many connections as it can open.
        let mut conns = [0 as RawFd; CONNECTIONS];
        for slot in conns.iter_mut() {
            *slot = raw::connect(&addr, libc::SOCK_SEQPACKET);
            if *slot >= 0 {
                c.report[4] += 1;
            }
        }
        // SAFETY: sleeping.
        unsafe { libc::usleep(1_000_000) };
        for &fd in &conns {
            if fd >= 0 && raw::peer_closed(fd) {
                c.report[5] += 1;
            }
        }
        c.send();
        c.wait_for_parent();
        for &fd in &conns {
            if fd >= 0 {
                raw::close(fd);
            }
        }
        // The listeners go with their processes.
        raw::close(hold_w);
        // SAFETY: reaping this child's own children.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
    });
    let r = child.report(Duration::from_secs(60)).expect("child report");
    let (accepted, refused, unanswered, failed) = (r[0], r[1], r[2], r[3]);
    eprintln!("self-made listeners: {accepted} accepted, {refused} refused; connections: {r:?}");
    assert_eq!(failed, 0, "making {LISTENERS} listeners: {r:?}");
    assert_eq!(unanswered, 0, "every registration is answered: {r:?}");
    assert!(
        accepted > 0 && accepted < LISTENERS as i64 && refused == LISTENERS as i64 - accepted,
        "self-made listeners: {accepted} accepted, {refused} refused of {LISTENERS}: one uid \
         must not register without bound"
    );
    let (connected, closed) = (r[4], r[5]);
    let alive = connected - closed;
    assert!(
        alive <= 512 && closed >= CONNECTIONS as i64 - 512 - 1,
        "{connected} connected, {closed} closed by the daemon: at most 512 per uid"
    );
    let held = d.fd_count();
    assert!(
        held < fds_before + 4 * 512,
        "the daemon holds {held} fds for one uid (had {fds_before})"
    );

    // While the agent holds its share: root is served, the kernel tiers hold, another user's
    // `oknek run` works, and the agent's own `oknek run` refuses to start the command.
    d.assert_serving(RESPONSIVE);
    let o = run(
        &mut agent_cmd("cat", &[home.key.as_os_str()]),
        CHILD_TIMEOUT,
    );
    assert_refused(
        "the key while the agent hogs the hook socket",
        &o,
        &home.secret,
    );
    let mut other = as_user(OTHER_UID, OTHER_UID, &bins().oknek, &[]);
    other
        .arg("--runtime-dir")
        .arg(&d.runtime)
        .args(["run", "--agent", "other", "--", "cat"])
        .arg(&public);
    let o = run(&mut other, CHILD_TIMEOUT);
    assert_read("another uid's oknek run", &o, "PUBLIC-CONTENT");
    let o = d.run_agent("demo", Path::new("/"), &[os("cat"), home.key.as_os_str()]);
    assert_eq!(o.status.code(), Some(126), "fails closed: {}", text(&o));
    assert!(!text(&o).contains(&home.secret));

    child.release();
    assert_eq!(child.wait(Duration::from_secs(10)), 0);
    // The listeners die with their process and the connections with the close: all released.
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.fd_count() > fds_before + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.fd_count() <= fds_before + 4,
        "fds released: {}",
        d.fd_count()
    );
    let o = d.run_agent("demo", Path::new("/"), &[os("cat"), home.key.as_os_str()]);
    assert_refused("oknek run works again", &o, &home.secret);
    assert_eq!(o.status.code(), Some(1), "cat's own failure: {}", text(&o));
    d.assert_serving(RESPONSIVE);
    let log = d.stop();
    assert!(log.contains("connection limit"), "{log}");
    d.assert_verifies();
}

/// (5c) An fd handed to the daemon is closed by the daemon. Closing the last reference to a TCP
/// socket with SO_LINGER and unsent data waits for the linger time, so the agent must not be able
/// to hand the daemon's single loop one: every protected open on the host would wait with it.
/// The agent closes its copy right after sending it, while the daemon is busy, so the daemon's
/// copy is the last one.
#[test]
fn a_lingering_socket_sent_to_the_hook_socket_does_not_stall_the_daemon() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let home = FakeHome::new("linger");
    let mut d = Daemon::start(&shipped_rules(), NOBODY_AGENT);
    let addr = oknekd::hook::sockaddr_un(&d.runtime.join("oknek.sock")).unwrap();
    let frame = frames::open(1, s(&home.key), true);
    let child = fork_as(AGENT_UID, AGENT_GID, |c| {
        // SAFETY: plain socket calls on local data.
        unsafe {
            let l = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let mut a: libc::sockaddr_in = std::mem::zeroed();
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let small: libc::c_int = 4096;
            libc::setsockopt(
                l,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const small).cast(),
                4,
            );
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            libc::bind(l, (&raw const a).cast(), len);
            libc::listen(l, 1);
            let mut al = len;
            libc::getsockname(l, (&raw mut a).cast(), &mut al);
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            libc::connect(s, (&raw const a).cast(), len);
            let mut p = libc::pollfd {
                fd: s,
                events: libc::POLLOUT,
                revents: 0,
            };
            libc::poll(&mut p, 1, 1000);
            // The peer is accepted and never reads: the data stays unsent.
            let peer = libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
            let chunk = [b'x'; 4096];
            while libc::send(s, chunk.as_ptr().cast(), chunk.len(), 0) > 0 {
                c.report[1] += 4096;
            }
            let flags = libc::fcntl(s, libc::F_GETFL);
            libc::fcntl(s, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 15,
            };
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            // Keep the daemon busy for a while (questions about the key from a live agent: a
            // decision and a signed bundle each), then send the socket and close this copy at
            // once. The daemon judges the frame long after: its copy is the last one.
            for _ in 0..5 {
                let busy = raw::connect(&addr, libc::SOCK_SEQPACKET);
                for _ in 0..10 {
                    raw::send(busy, &frame, &[], libc::MSG_DONTWAIT);
                }
            }
            let u = raw::connect(&addr, libc::SOCK_SEQPACKET);
            c.report[0] = raw::send(u, &frame, &[s], 0) as i64;
            libc::close(s);
            c.report[2] = i64::from(peer);
        }
        c.send();
        c.wait_for_parent();
    });
    let r = child.report(Duration::from_secs(20)).expect("child report");
    assert!(
        r[0] > 0 && r[1] > 0 && r[2] >= 0,
        "the lingering socket was sent: {r:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut cat = Command::new("cat");
    cat.arg(&home.key);
    let o = run(&mut cat, Duration::from_secs(30));
    let root_read = t0.elapsed();
    let status = d.status();
    child.release();
    let _ = child.wait(Duration::from_secs(5));
    assert_read("root reads the key", &o, &home.secret);
    assert!(
        root_read < RESPONSIVE,
        "root's read of a protected file waited {root_read:?} for the daemon"
    );
    let (_, took) = status.expect("status");
    assert!(took < RESPONSIVE, "oknek status took {took:?}");
    d.stop();
}

/// (6) The agent cannot signal, stop, trace or read the daemon.
#[test]
fn the_agent_cannot_kill_stop_or_trace_the_daemon() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let home = FakeHome::new("kill");
    let mut d = Daemon::start(&shipped_rules(), NOBODY_AGENT);
    let pid = d.pid().to_string();
    let helper = &bins().helper;
    let check = |what: &str, o: &std::process::Output| {
        let t = text(o);
        assert!(o.status.success(), "{what}: {t}");
        for line in [
            "kill SIGKILL: errno=1 ",
            "kill SIGSTOP: errno=1 ",
            "kill SIGTERM: errno=1 ",
            "kill SIGHUP: errno=1 ",
            "ptrace ATTACH: errno=1 ",
            "ptrace SEIZE: errno=1 ",
            "process_vm_readv: errno=1 ",
            "pidfd_send_signal SIGKILL: errno=1 ",
            "pidfd_getfd: errno=1 ",
        ] {
            assert!(t.contains(line), "{what}: expected {line:?}: {t}");
        }
        assert!(
            t.contains("open mem: errno=13 ") || t.contains("open mem: errno=1 "),
            "{what}: /proc/PID/mem: {t}"
        );
        assert!(!t.contains(": ok"), "{what}: something succeeded: {t}");
    };
    let o = run(
        &mut agent_cmd(helper, &[os("attack"), os(&pid)]),
        CHILD_TIMEOUT,
    );
    check("declared agent", &o);
    let o = d.run_agent(
        "demo",
        Path::new("/"),
        &[helper.as_os_str(), os("attack"), os(&pid)],
    );
    check("oknek run", &o);
    for sig in ["-KILL", "-STOP", "-TERM"] {
        let o = run(&mut agent_cmd("kill", &[os(sig), os(&pid)]), CHILD_TIMEOUT);
        assert_refused(&format!("kill {sig} {pid}"), &o, "never");
    }
    assert!(d.alive_and_running(), "oknekd was hurt:\n{}", d.log());
    d.assert_serving(RESPONSIVE);
    let o = run(
        &mut agent_cmd("cat", &[home.key.as_os_str()]),
        CHILD_TIMEOUT,
    );
    assert_refused("the key after the attacks", &o, &home.secret);
    // Root's SIGHUP reloads; it must not take the default action in any of the daemon's threads.
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(d.pid() as libc::pid_t, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("reloaded (SIGHUP)") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.log().contains("reloaded (SIGHUP)"), "{}", d.log());
    assert!(d.alive_and_running(), "SIGHUP killed oknekd:\n{}", d.log());
    d.stop();
    d.assert_verifies();
}

/// Parses `key=value` words of the helper's flood line.
fn counters(o: &std::process::Output) -> std::collections::HashMap<String, i64> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("allowed_ok="))
        .flat_map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(-1)))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// (7) Flood: opens as fast as an agent can in both tiers, plus hook frames, while root keeps
/// asking for status. Every denial is an EPERM, every allowed open works, and every denial that
/// reached the daemon is a signed bundle.
#[test]
fn flood_keeps_the_daemon_responsive_and_every_denial_recorded() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let home = FakeHome::new("flood");
    let open_dir = scratch("flood", false);
    let allowed = open_dir.path().join("allowed.txt");
    std::fs::write(&allowed, "ALLOWED\n").unwrap();
    set_mode(&allowed, 0o644);
    let mut d = Daemon::start(&shipped_rules(), NOBODY_AGENT);
    let key = s(&home.key).to_owned();
    // A declared agent's allowed opens never reach the daemon (nothing of them is marked); under
    // `oknek run` every open is a round trip, ≈ 0.5 ms in a debug build: fewer of those.
    const FAN_ALLOWED: u32 = 50_000;
    const SEC_ALLOWED: u32 = 5_000;
    const DENIED: u32 = 1_000;
    const FRAMES: usize = 1_500;
    const WINDOW: usize = 8;

    let fan = {
        let mut cmd = agent_cmd(
            &bins().helper,
            &[
                os("flood"),
                allowed.as_os_str(),
                os(&FAN_ALLOWED.to_string()),
                os(&key),
                os(&DENIED.to_string()),
            ],
        );
        std::thread::spawn(move || run(&mut cmd, CHILD_TIMEOUT))
    };
    let sec = {
        let mut cmd = agent_cmd(&bins().oknek, &[]);
        cmd.arg("--runtime-dir")
            .arg(&d.runtime)
            .args(["run", "--agent", "flood", "--"])
            .arg(&bins().helper)
            .arg("flood")
            .arg(&allowed)
            .arg(SEC_ALLOWED.to_string())
            .arg(&key)
            .arg(DENIED.to_string());
        std::thread::spawn(move || run(&mut cmd, CHILD_TIMEOUT))
    };
    // Hook frames asking about the key (each a decision and a bundle), with garbage between.
    let addr = oknekd::hook::sockaddr_un(&d.runtime.join("oknek.sock")).unwrap();
    let ask = frames::open(3, &key, true);
    let junk = frames::noise(42, 300);
    let hook = fork_as(AGENT_UID, AGENT_GID, |c| {
        let fd = raw::connect(&addr, libc::SOCK_SEQPACKET);
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 64];
        let mut outstanding = 0;
        for i in 0..FRAMES {
            if raw::send(fd, &ask, &[], 0) > 0 {
                c.report[0] += 1;
                outstanding += 1;
            }
            if i % 10 == 0 {
                raw::send(fd, &junk, &[], 0);
            }
            if outstanding == WINDOW || i + 1 == FRAMES {
                while outstanding > 0 {
                    let n = raw::recv(fd, &mut buf, 20_000);
                    outstanding -= 1;
                    match frames::decode_reply(&buf[..n.max(0) as usize]) {
                        Some(r) if r.errno == libc::EPERM => c.report[1] += 1,
                        Some(_) => c.report[2] += 1,
                        None => c.report[3] += 1,
                    }
                }
            }
        }
        raw::close(fd);
    });

    // Root asks for status all along.
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while !(fan.is_finished() && sec.is_finished()) {
        let (_, took) = d
            .status()
            .unwrap_or_else(|e| panic!("status during the flood: {e}"));
        slowest = slowest.max(took);
        asked += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let hook_report = hook
        .report(Duration::from_secs(60))
        .expect("hook flood report");
    let hook_pid = u64::from(hook.pid());
    assert_eq!(hook.wait(Duration::from_secs(10)), 0);
    let fan = fan.join().unwrap();
    let sec = sec.join().unwrap();
    let after = d.assert_serving(RESPONSIVE);
    assert!(
        slowest < RESPONSIVE,
        "the slowest of {asked} status answers during the flood took {slowest:?}"
    );

    for (what, o, allowed_n) in [
        ("declared agent", &fan, FAN_ALLOWED),
        ("oknek run", &sec, SEC_ALLOWED),
    ] {
        let c = counters(o);
        assert!(o.status.success(), "{what}: {}", text(o));
        assert_eq!(
            c.get("allowed_ok"),
            Some(&i64::from(allowed_n)),
            "{what}: {c:?}"
        );
        assert_eq!(c.get("allowed_failed"), Some(&0), "{what}: {c:?}");
        assert_eq!(
            c.get("key_eperm"),
            Some(&i64::from(DENIED)),
            "{what}: {c:?}"
        );
        assert_eq!(c.get("key_other"), Some(&0), "{what}: {c:?}");
        assert_eq!(c.get("key_opened"), Some(&0), "{what}: {c:?}");
        eprintln!("{what}: {c:?}");
    }
    let [sent, eperm, other, lost] = [
        hook_report[0],
        hook_report[1],
        hook_report[2],
        hook_report[3],
    ];
    assert_eq!(sent, FRAMES as i64, "hook frames sent: {hook_report:?}");
    assert_eq!(
        (eperm, other, lost),
        (sent, 0, 0),
        "every hook question about the key answered EPERM"
    );
    eprintln!(
        "status: slowest {slowest:?} of {asked}; counters after: {}",
        after["counters"]
    );

    d.stop();
    // fanotify raises one permission event per open of a marked inode and seccomp one
    // notification per open call, and the daemon writes one bundle per decision that fired a
    // rule; hook frames are judged one by one while their sender lives (it waits for each
    // answer). So: exactly one R1.ssh block per denied attempt, per tier.
    let events = d.events();
    let ssh = bundles(&events, "R1.ssh", "block");
    let count = |mech: &str, pid: Option<u64>, agent: Option<&str>| {
        ssh.iter()
            .filter(|e| mechanism(e) == mech && uid_of(e) == Some(AGENT_UID.into()))
            .filter(|e| pid.is_none_or(|p| e["bundle"]["process"]["tgid"].as_u64() == Some(p)))
            .filter(|e| agent.is_none_or(|a| e["bundle"]["agent"] == a))
            .count()
    };
    assert_eq!(
        count("fanotify", None, None),
        DENIED as usize,
        "fanotify bundles of the flooding process"
    );
    assert_eq!(
        count("seccomp", None, Some("nobody-agent")),
        DENIED as usize,
        "seccomp bundles of the flooding tree"
    );
    assert_eq!(
        count("preload", Some(hook_pid), None),
        FRAMES,
        "one bundle per hook question"
    );
    let verified = d.assert_verifies();
    eprintln!("{}", verified.lines().next().unwrap_or_default());
}

/// (8) The evidence names the agent, its uid and the enforcing mechanism, verifies, and a
/// changed byte is caught.
#[test]
fn evidence_names_agent_uid_and_mechanism_and_verifies() {
    if !root_or_skip() {
        return;
    }
    let _serial = serial();
    let home = FakeHome::new("evidence");
    let mut d = Daemon::start(&shipped_rules(), NOBODY_AGENT);
    let key = s(&home.key).to_owned();
    for _ in 0..2 {
        let o = run(&mut agent_cmd("cat", &[os(&key)]), CHILD_TIMEOUT);
        assert_refused("declared agent", &o, &home.secret);
        let o = d.run_agent("demo", Path::new("/"), &[os("cat"), os(&key)]);
        assert_refused("oknek run", &o, &home.secret);
    }
    let o = run(Command::new("cat").arg(&key), CHILD_TIMEOUT);
    assert_read("root", &o, &home.secret);

    // Committed within milliseconds: visible while the daemon runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while bundles(&d.events(), "R1.ssh", "block").len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    d.stop();
    let events = d.events();
    let ssh = bundles(&events, "R1.ssh", "block");
    // A declared agent launched with `oknek run --agent demo` keeps its declared identity.
    for (mech, agent) in [("fanotify", "nobody-agent"), ("seccomp", "nobody-agent")] {
        let mine: Vec<&&Value> = ssh.iter().filter(|e| mechanism(e) == mech).collect();
        assert_eq!(mine.len(), 2, "{mech}: {ssh:?}");
        for e in mine {
            let b = &e["bundle"];
            assert_eq!(b["process"]["uid"], AGENT_UID, "{e}");
            assert_eq!(b["capture"]["uid"], AGENT_UID, "{e}");
            assert_eq!(b["agent"], agent, "{e}");
            assert_eq!(b["kind"], "open", "{e}");
            assert_eq!(b["capture"]["path"], key.as_str(), "{e}");
            assert_eq!(b["process"]["comm"], "cat", "{e}");
            assert!(
                e["sig"].as_str().is_some_and(|s| s.len() == 128)
                    && e["hash"].as_str().is_some_and(|h| h.len() == 64),
                "signed and hashed: {e}"
            );
        }
    }
    assert!(
        events.iter().all(|e| uid_of(e) != Some(0)),
        "root is no agent: nothing recorded for it"
    );
    // Chained: each bundle names its predecessor's hash.
    for pair in events.windows(2) {
        assert_eq!(pair[1]["bundle"]["prev"], pair[0]["hash"], "{pair:?}");
    }
    let ok = d.assert_verifies();
    assert!(
        ok.contains(&format!("ok: {} bundles", events.len())),
        "{ok}"
    );

    // A copy of the store with one verdict changed in the journal does not verify.
    let copy = scratch("tampered", false);
    let cp = run(
        Command::new("cp").arg("-a").arg(&d.state).arg(copy.path()),
        CHILD_TIMEOUT,
    );
    assert!(cp.status.success(), "{}", text(&cp));
    let state = copy.path().join("state");
    let journal_dir = state.join("journal");
    let journal = std::fs::read_dir(&journal_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_file())
        .expect("a journal file");
    let body = std::fs::read_to_string(&journal).unwrap();
    assert!(body.contains("\"verdict\":\"block\""), "{body}");
    std::fs::write(
        &journal,
        body.replacen("\"verdict\":\"block\"", "\"verdict\":\"allow\"", 1),
    )
    .unwrap();
    let mut verify = Command::new(&bins().oknek);
    verify.arg("verify").arg("--state-dir").arg(&state);
    let o = run(&mut verify, CHILD_TIMEOUT);
    assert_eq!(o.status.code(), Some(1), "a tampered journal: {}", text(&o));
}
