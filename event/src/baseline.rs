//! Baseline features: the action classes oknek counts per agent, so R7 can spot the new.
//!
//! The rule engine asks a [`BaselineView`] how often an agent did something; the evidence store
//! keeps the counts. Both extract feature values with [`Event::feature_value`], so what is counted
//! is exactly what is asked about.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::{Action, Event, Kind, SockAddr, Timestamp};

/// An action class counted in an agent's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// exec: basename of the executed file.
    ExecBasename,
    /// open: the first three components of the opened file's directory.
    OpenDir,
    /// connect / send: address class and port (`public:443`, `loopback:11434`, `unix`).
    ConnectDest,
    /// model_call: the provider.
    ModelProvider,
    /// model_call: `provider/model`.
    Model,
}

impl Feature {
    pub const ALL: [Feature; 5] = [
        Feature::ExecBasename,
        Feature::OpenDir,
        Feature::ConnectDest,
        Feature::ModelProvider,
        Feature::Model,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::ExecBasename => "exec_basename",
            Feature::OpenDir => "open_dir",
            Feature::ConnectDest => "connect_dest",
            Feature::ModelProvider => "model_provider",
            Feature::Model => "model",
        }
    }

    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn applies_to(self, kind: Kind) -> bool {
        match self {
            Feature::ExecBasename => kind == Kind::Exec,
            Feature::OpenDir => kind == Kind::Open,
            Feature::ConnectDest => matches!(kind, Kind::Connect | Kind::Send),
            Feature::ModelProvider | Feature::Model => kind == Kind::ModelCall,
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Coarse class of a destination address: what a baseline should generalise over.
pub fn address_class(ip: IpAddr) -> &'static str {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => "loopback",
        IpAddr::V4(v4) if v4.is_private() || v4.is_link_local() => "private",
        IpAddr::V6(v6) if v6.is_loopback() => "loopback",
        // Unique local (fc00::/7) and link-local (fe80::/10).
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => "private",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => "private",
        _ => "public",
    }
}

impl Event {
    /// The value of a baseline feature on this event, or `None` if the feature does not apply.
    pub fn feature_value(&self, feature: Feature) -> Option<String> {
        match (feature, &self.action) {
            (Feature::ExecBasename, Action::Exec { path, .. }) => {
                Some(path.rsplit('/').next().unwrap_or(path).to_owned())
            }
            (Feature::OpenDir, Action::Open { path, .. }) => {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).take(3).collect();
                Some(format!("/{}", parts.join("/")))
            }
            (Feature::ConnectDest, Action::Connect { dest } | Action::Send { dest, .. }) => {
                Some(match dest {
                    SockAddr::Unix { .. } => "unix".to_owned(),
                    SockAddr::Inet { addr, port } => {
                        format!("{}:{port}", address_class(IpAddr::V4(*addr)))
                    }
                    SockAddr::Inet6 { addr, port } => {
                        format!("{}:{port}", address_class(IpAddr::V6(*addr)))
                    }
                })
            }
            (Feature::ModelProvider, Action::ModelCall { provider, .. }) => Some(provider.clone()),
            (
                Feature::Model,
                Action::ModelCall {
                    provider, model, ..
                },
            ) => Some(format!("{provider}/{}", model.as_deref().unwrap_or("?"))),
            _ => None,
        }
    }
}

/// Read access to per-agent baseline counts.
pub trait BaselineView {
    /// When the agent was first observed inside the baseline window; `None` if never.
    fn history_since(&self, agent: &str) -> Option<Timestamp>;
    /// How often the agent showed `value` for `feature` within the window.
    fn seen_count(&self, agent: &str, feature: Feature, value: &str) -> u64;
}

/// A baseline in memory: used by fixtures, simulations and tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryBaseline {
    pub since: HashMap<String, Timestamp>,
    pub counts: HashMap<(String, Feature, String), u64>,
}

impl MemoryBaseline {
    pub fn record(&mut self, event: &Event) {
        let Some(agent) = event.agent() else { return };
        let since = self.since.entry(agent.to_owned()).or_insert(event.time);
        *since = (*since).min(event.time);
        for feature in Feature::ALL {
            if let Some(value) = event.feature_value(feature) {
                *self
                    .counts
                    .entry((agent.to_owned(), feature, value))
                    .or_default() += 1;
            }
        }
    }
}

impl BaselineView for MemoryBaseline {
    fn history_since(&self, agent: &str) -> Option<Timestamp> {
        self.since.get(agent).copied()
    }

    fn seen_count(&self, agent: &str, feature: Feature, value: &str) -> u64 {
        self.counts
            .get(&(agent.to_owned(), feature, value.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

/// A baseline with no history at all: every agent is still warming up.
pub struct NoBaseline;

impl BaselineView for NoBaseline {
    fn history_since(&self, _agent: &str) -> Option<Timestamp> {
        None
    }

    fn seen_count(&self, _agent: &str, _feature: Feature, _value: &str) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind_json: &str) -> Event {
        Event::from_json(&format!(
            r#"{{"time":"2026-11-22T08:30:00Z","source":"recorded",
                "process":{{"pid":7,"uid":1000,"agent":"aider"}},{kind_json}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn feature_values() {
        let exec = event(r#""kind":"exec","path":"/usr/bin/curl","argv":["curl"]"#);
        assert_eq!(exec.feature_value(Feature::ExecBasename).unwrap(), "curl");
        assert_eq!(exec.feature_value(Feature::OpenDir), None);
        let open = event(r#""kind":"open","path":"/home/dev/src/app/main.rs""#);
        assert_eq!(
            open.feature_value(Feature::OpenDir).unwrap(),
            "/home/dev/src"
        );
        let root = event(r#""kind":"open","path":"/etc""#);
        assert_eq!(root.feature_value(Feature::OpenDir).unwrap(), "/");
        let conn = event(
            r#""kind":"connect","dest":{"family":"inet6","addr":"::ffff:10.0.0.5","port":5432}"#,
        );
        assert_eq!(
            conn.feature_value(Feature::ConnectDest).unwrap(),
            "private:5432"
        );
        let model = event(r#""kind":"model_call","provider":"ollama","model":"llama3""#);
        assert_eq!(
            model.feature_value(Feature::Model).unwrap(),
            "ollama/llama3"
        );
    }

    #[test]
    fn memory_baseline_counts() {
        let mut b = MemoryBaseline::default();
        let exec = event(r#""kind":"exec","path":"/usr/bin/git""#);
        b.record(&exec);
        b.record(&exec);
        assert_eq!(b.seen_count("aider", Feature::ExecBasename, "git"), 2);
        assert_eq!(b.seen_count("aider", Feature::ExecBasename, "nc"), 0);
        assert_eq!(b.history_since("aider"), Some(exec.time));
        assert_eq!(b.history_since("codex"), None);
    }

    #[test]
    fn address_classes() {
        assert_eq!(address_class("127.0.0.1".parse().unwrap()), "loopback");
        assert_eq!(address_class("192.168.1.1".parse().unwrap()), "private");
        assert_eq!(address_class("fd00::1".parse().unwrap()), "private");
        assert_eq!(address_class("1.1.1.1".parse().unwrap()), "public");
    }
}
