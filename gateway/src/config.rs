//! The gateway's configuration: the `providers:` and `gateway:` keys of /etc/oknek/oknek.yaml.
//!
//! ```yaml
//! providers:
//!   - { name: openai, kind: cloud, api: openai, endpoints: ["api.openai.com:443"] }
//! gateway:
//!   listen: [/run/oknek/gateway.sock, "127.0.0.1:8088"]
//!   ca_file: /etc/oknek/extra-ca.pem       # trusted besides the system bundle
//! ```
//!
//! The gateway reads the daemon's own file so that both agree on the providers; keys that are
//! the daemon's alone (agents, tiers, …) are left to the daemon, which rejects typos in them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::providers::{GatewaySettings, ProviderSpec, Providers};

pub const DEFAULT_CONFIG: &str = "/etc/oknek/oknek.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The parts of oknek.yaml the gateway reads.
#[derive(Debug, Clone, Default, Deserialize)]
struct SharedFile {
    #[serde(default)]
    providers: Vec<ProviderSpec>,
    #[serde(default)]
    gateway: GatewaySettings,
    #[serde(default)]
    paths: SharedPaths,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct SharedPaths {
    runtime_dir: PathBuf,
}

impl Default for SharedPaths {
    fn default() -> SharedPaths {
        SharedPaths {
            runtime_dir: PathBuf::from("/run/oknek"),
        }
    }
}

/// Where the gateway accepts agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl Listen {
    pub fn parse(text: &str) -> Result<Listen, String> {
        if text.starts_with('/') {
            return Ok(Listen::Unix(PathBuf::from(text)));
        }
        let addr: std::net::SocketAddr = text
            .parse()
            .map_err(|_| format!("listen {text:?}: expected an absolute socket path or ip:port"))?;
        // Callers on TCP are identified through this host's socket table: only loopback works.
        if !addr.ip().is_loopback() {
            return Err(format!(
                "listen {text:?}: only loopback addresses (callers are identified through this \
                 host's socket table)"
            ));
        }
        Ok(Listen::Tcp(addr))
    }
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub providers: Providers,
    pub listen: Vec<Listen>,
    pub control_socket: PathBuf,
    pub settings: GatewaySettings,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: SharedFile = if text.trim().is_empty() {
            SharedFile::default()
        } else {
            serde_norway::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        let providers =
            Providers::from_specs(&file.providers).map_err(|e| invalid(e.to_string()))?;
        if providers.is_empty() {
            return Err(invalid(
                "no providers: declare at least one under `providers:`".into(),
            ));
        }
        let listen = file
            .gateway
            .listen
            .iter()
            .map(|l| Listen::parse(l))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        if listen.is_empty() {
            return Err(invalid(
                "gateway.listen: at least one address is needed".into(),
            ));
        }
        if file.gateway.max_body_bytes == 0 || file.gateway.max_connections == 0 {
            return Err(invalid(
                "gateway.max_body_bytes and gateway.max_connections must be positive".into(),
            ));
        }
        let control_socket = file
            .gateway
            .control_socket
            .clone()
            .unwrap_or_else(|| file.paths.runtime_dir.join("control.sock"));
        Ok(Config {
            providers,
            listen,
            control_socket,
            settings: file.gateway,
        })
    }

    pub fn decision_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.decision_timeout_ms)
    }

    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.upstream_timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_the_daemon_file_and_checks_its_own_keys() {
        let text = "agents:\n  - {name: a, uid: [1]}\npaths: {runtime_dir: /tmp/r, state_dir: /x}\n\
                    providers:\n  - {name: openai, kind: cloud, api: openai, endpoints: [\"api.openai.com:443\"]}\n\
                    gateway:\n  listen: [/tmp/g.sock, \"127.0.0.1:8088\"]\n";
        let c = Config::parse(text, Path::new("t.yaml")).unwrap();
        assert_eq!(c.control_socket, Path::new("/tmp/r/control.sock"));
        assert_eq!(c.listen.len(), 2);
        let typo = text.replace("listen:", "lisen:");
        let e = Config::parse(&typo, Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let public = text.replace("127.0.0.1:8088", "0.0.0.0:8088");
        let e = Config::parse(&public, Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only loopback"), "{e}");
        let e = Config::parse("gateway: {}\n", Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no providers"), "{e}");
    }
}
