//! Expands the path globs of block rules to the files that exist, so tiers that protect objects
//! (fanotify marks, Landlock rules, kernel maps) can protect them by inode.
//!
//! Expansion happens at load and reload; a file created later (a new SSH key) is protected from
//! the next reload on. The walk is bounded so a glob like `/**` cannot stall the daemon.

use std::path::{Path, PathBuf};

use oknek_engine::Glob;

/// At most this many paths per glob, and this many directories visited.
const MAX_MATCHES: usize = 10_000;
const MAX_VISITED: usize = 50_000;
/// `**` descends at most this deep.
const MAX_DEPTH: usize = 8;

/// The existing paths that match `pattern` (an absolute glob in the rule language's syntax).
/// Symlinks are not followed during the walk: a match is reported by its own path, and callers
/// resolve it to an inode.
pub fn expand_glob(pattern: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !pattern.starts_with('/') {
        return out;
    }
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    let mut visited = 0usize;
    walk(Path::new("/"), &parts, &mut out, &mut visited, 0);
    out.sort();
    out.dedup();
    out
}

fn has_meta(part: &str) -> bool {
    part.contains(['*', '?', '['])
}

fn walk(dir: &Path, parts: &[&str], out: &mut Vec<PathBuf>, visited: &mut usize, depth: usize) {
    if out.len() >= MAX_MATCHES || *visited >= MAX_VISITED {
        return;
    }
    let Some((first, rest)) = parts.split_first() else {
        if dir.symlink_metadata().is_ok() {
            out.push(dir.to_owned());
        }
        return;
    };
    if *first == "**" {
        // `**` matches zero or more whole components.
        walk(dir, rest, out, visited, depth);
        if depth >= MAX_DEPTH {
            return;
        }
        for child in children(dir, visited) {
            if child.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                walk(&child, parts, out, visited, depth + 1);
            }
        }
        return;
    }
    if !has_meta(first) {
        let next = dir.join(first);
        if next.symlink_metadata().is_ok() {
            walk(&next, rest, out, visited, depth);
        }
        return;
    }
    let Ok(glob) = Glob::new(first) else { return };
    for child in children(dir, visited) {
        let name = child.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| glob.matches(&n))
            && (rest.is_empty() || child.symlink_metadata().is_ok_and(|m| m.is_dir()))
        {
            walk(&child, rest, out, visited, depth);
        }
    }
}

fn children(dir: &Path, visited: &mut usize) -> Vec<PathBuf> {
    *visited += 1;
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_star_and_double_star() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in [
            "a/.ssh/id_rsa",
            "a/.ssh/id_rsa.pub",
            "b/.ssh/id_ed25519",
            "c/x/y/z/creds.json",
        ] {
            let full = root.join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, "k").unwrap();
        }
        let r = root.display();
        let got = expand_glob(&format!("{r}/*/.ssh/id_*"));
        assert_eq!(got.len(), 3);
        let got = expand_glob(&format!("{r}/*/.ssh/id_[!.]*[!b]"));
        assert!(
            got.iter().all(|p| !p.to_string_lossy().ends_with(".pub")),
            "{got:?}"
        );
        let got = expand_glob(&format!("{r}/c/**/creds.json"));
        assert_eq!(got, vec![root.join("c/x/y/z/creds.json")]);
        assert!(expand_glob(&format!("{r}/nothing/*")).is_empty());
        assert!(expand_glob("relative/*").is_empty());
    }
}
