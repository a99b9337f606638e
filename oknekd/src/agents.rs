//! Who is an agent: a named set of processes.
//!
//! A process belongs to an agent when it matches one of the agent's selectors (executable path
//! or content hash, systemd unit, cgroup, uid), when it was launched with `oknek run --agent`,
//! or when it descends from such a process: membership is inherited over fork and exec, so the
//! shell an agent spawns is the agent too.
//!
//! Userspace can only see ancestry that still exists: an agent's grandchild whose parent exited
//! is re-parented and loses the chain unless the agent is selected by cgroup, unit or uid (which
//! children inherit in the kernel), or was launched by `oknek run` (a subreaper, so orphans stay
//! in its tree). The kernel tier tracks forks in the kernel and has no such gap.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::config::AgentSpec;
use crate::filehash::{FileVersion, sha256_hex};
use crate::procinfo;

/// How far up the process tree membership is looked for.
const MAX_ANCESTRY: usize = 64;
/// Cached decisions; the cache is cleared when it grows past this.
const MAX_CACHED: usize = 65_536;
/// Executables larger than this are not hashed (a hash selector cannot match them).
const MAX_HASHED_EXE: u64 = 512 << 20;

/// A process for good: pids are reused, (pid, start time) pairs are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcKey {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcKey {
    pub fn of(pid: u32) -> io::Result<ProcKey> {
        Ok(ProcKey {
            pid,
            start_time: procinfo::stat(pid)?.start_time,
        })
    }
}

/// Agent membership with caches.
#[derive(Debug, Default)]
pub struct Agents {
    specs: Vec<AgentSpec>,
    /// Roots registered by `oknek run`: every descendant is the named agent.
    launched: HashMap<ProcKey, Arc<str>>,
    cache: HashMap<ProcKey, Option<Arc<str>>>,
    /// sha256 of executables, by identity of the file (measured once per version of the file).
    exe_hashes: HashMap<FileVersion, String>,
    names: HashMap<String, Arc<str>>,
}

impl Agents {
    pub fn new(specs: Vec<AgentSpec>) -> Agents {
        let mut agents = Agents::default();
        agents.replace_specs(specs);
        agents
    }

    /// Installs a new set of declared agents (config reload); launched roots stay.
    pub fn replace_specs(&mut self, specs: Vec<AgentSpec>) {
        self.names = specs
            .iter()
            .map(|s| (s.name.clone(), Arc::from(s.name.as_str())))
            .collect();
        self.specs = specs;
        self.cache.clear();
    }

    pub fn declared(&self) -> &[AgentSpec] {
        &self.specs
    }

    pub fn is_declared(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Registers `root` (the `oknek run` supervisor) as the root of a launched agent tree.
    pub fn register_launch(&mut self, root: ProcKey, agent: &str) {
        self.launched.insert(root, Arc::from(agent));
        self.cache.clear();
    }

    /// Launched roots that still exist, with their agent.
    pub fn launched(&mut self) -> Vec<(ProcKey, Arc<str>)> {
        self.launched
            .retain(|key, _| ProcKey::of(key.pid).is_ok_and(|now| now == *key));
        self.launched.iter().map(|(k, a)| (*k, a.clone())).collect()
    }

    /// The agent `pid` belongs to, or `None`. A process that vanished is no agent.
    pub fn agent_of(&mut self, pid: u32) -> Option<Arc<str>> {
        self.agent_of_key(ProcKey::of(pid).ok()?)
    }

    /// [`Agents::agent_of`] for a process whose key the caller already read.
    pub fn agent_of_key(&mut self, key: ProcKey) -> Option<Arc<str>> {
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let found = self.lookup(key);
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(key, found.clone());
        found
    }

    fn lookup(&mut self, start: ProcKey) -> Option<Arc<str>> {
        let mut key = start;
        for _ in 0..MAX_ANCESTRY {
            if let Some(hit) = self.cache.get(&key) {
                return hit.clone();
            }
            if let Some(agent) = self.launched.get(&key) {
                return Some(agent.clone());
            }
            if let Some(agent) = self.match_selectors(key.pid) {
                return Some(agent);
            }
            let stat = procinfo::stat(key.pid).ok()?;
            if stat.start_time != key.start_time || stat.ppid <= 1 {
                return None;
            }
            key = ProcKey::of(stat.ppid).ok()?;
        }
        None
    }

    fn match_selectors(&mut self, pid: u32) -> Option<Arc<str>> {
        if self.specs.is_empty() {
            return None;
        }
        let exe = procinfo::exe(pid).ok();
        let status = procinfo::status(pid).ok();
        let cgroup = procinfo::cgroup(pid).ok();
        let mut exe_hash: Option<Option<String>> = None;
        for i in 0..self.specs.len() {
            let spec = &self.specs[i];
            let by_exe = exe
                .as_ref()
                .is_some_and(|e| spec.exe.iter().any(|p| p == e));
            let by_uid = status.is_some_and(|s| spec.uid.contains(&s.uid));
            let by_cgroup = cgroup.as_deref().is_some_and(|cg| {
                spec.cgroup.iter().any(|want| {
                    cg == want || cg.starts_with(&format!("{}/", want.trim_end_matches('/')))
                }) || procinfo::unit_of_cgroup(cg).is_some_and(|u| spec.unit.iter().any(|w| w == u))
                    || spec.unit.iter().any(|w| cg.split('/').any(|c| c == w))
            });
            let mut matched = by_exe || by_uid || by_cgroup;
            if !matched && !spec.exe_sha256.is_empty() {
                let hash = exe_hash
                    .get_or_insert_with(|| exe.as_deref().and_then(|e| self.exe_hash(pid, e)));
                let spec = &self.specs[i];
                matched = hash
                    .as_ref()
                    .is_some_and(|h| spec.exe_sha256.iter().any(|w| w.eq_ignore_ascii_case(h)));
            }
            if matched {
                return self.names.get(&self.specs[i].name).cloned();
            }
        }
        None
    }

    /// sha256 of a process's executable, read through /proc/PID/exe (the image actually running,
    /// even if the path was replaced), cached by file identity and mtime.
    pub fn exe_hash(&mut self, pid: u32, _exe: &Path) -> Option<String> {
        let mut file = File::open(format!("/proc/{pid}/exe")).ok()?;
        let md = file.metadata().ok()?;
        if md.len() > MAX_HASHED_EXE {
            return None;
        }
        let key = FileVersion::of(&md);
        if let Some(h) = self.exe_hashes.get(&key) {
            return Some(h.clone());
        }
        let hex = sha256_hex(&mut file, 64 * 1024).ok()?;
        if self.exe_hashes.len() >= 4096 {
            self.exe_hashes.clear();
        }
        self.exe_hashes.insert(key, hex.clone());
        Some(hex)
    }

    /// Forgets cached decisions (after a config reload or a membership change).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn launched_tree_is_inherited_by_children() {
        let me = std::process::id();
        let mut agents = Agents::new(vec![]);
        assert_eq!(agents.agent_of(me), None);
        agents.register_launch(ProcKey::of(me).unwrap(), "demo");
        assert_eq!(agents.agent_of(me).as_deref(), Some("demo"));
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert_eq!(agents.agent_of(child.id()).as_deref(), Some("demo"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            agents.agent_of(child.id()),
            None,
            "a reaped pid is no agent"
        );
    }

    #[test]
    fn selectors_by_exe_uid_and_hash() {
        let me = std::process::id();
        let exe = procinfo::exe(me).unwrap();
        let uid = unsafe { libc::getuid() };
        let by_uid = Agents::new(vec![AgentSpec {
            name: "u".into(),
            uid: vec![uid],
            ..AgentSpec::default()
        }])
        .agent_of(me);
        assert_eq!(by_uid.as_deref(), Some("u"));
        let by_exe = Agents::new(vec![AgentSpec {
            name: "e".into(),
            exe: vec![exe.clone()],
            ..AgentSpec::default()
        }])
        .agent_of(me);
        assert_eq!(by_exe.as_deref(), Some("e"));
        let mut hasher = Agents::new(vec![]);
        let hash = hasher.exe_hash(me, &exe).unwrap();
        let by_hash = Agents::new(vec![AgentSpec {
            name: "h".into(),
            exe_sha256: vec![hash.to_uppercase()],
            ..AgentSpec::default()
        }])
        .agent_of(me);
        assert_eq!(by_hash.as_deref(), Some("h"));
        let nobody = Agents::new(vec![AgentSpec {
            name: "n".into(),
            uid: vec![uid.wrapping_add(12345)],
            ..AgentSpec::default()
        }])
        .agent_of(me);
        assert_eq!(nobody, None);
    }
}
