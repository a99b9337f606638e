//! Model calls seen at `connect()`: which destinations are model providers, kept fresh as DNS
//! answers change, and the `model_call` event a connect to one of them is.
//!
//! Name resolution runs inside the daemon's one loop without NSS: the [`Resolver`] hands out
//! query datagrams, the daemon sends them from its own UDP sockets and feeds the answers back
//! ([`ModelCalls::on_readable`], [`ModelCalls::poll_resolver`]). When an answer changes an
//! address set the address book is rebuilt and the kernel tier reloads its provider map.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use oknek_event::{Action, Event};

use crate::config::Config;
use crate::providers::{AddressBook, HostsFile, Provider, Providers, ResolvConf, Resolver};
use crate::warn;

/// Rule id of the refusal of an agent's direct connect to a provider reached through the
/// gateway only.
pub const GATEWAY_ONLY_RULE: &str = "oknek.gateway_only";
/// Rule id of the refusal of a model call whose quota bucket could not be created.
pub const QUOTA_FULL_RULE: &str = "oknek.quota_full";

/// The provider name of weight files opened by local inference servers (reserved in
/// `providers:`).
pub const LOCAL_WEIGHTS_PROVIDER: &str = "local";

/// File names that are model weights: GGUF (llama.cpp, Ollama), safetensors, PyTorch and ONNX
/// checkpoints. Not `.pth`: Python's path configuration files in every site-packages share it,
/// and every Python start opens them.
const WEIGHTS_SUFFIXES: [&str; 5] = [".gguf", ".safetensors", ".pt", ".onnx", ".ggml"];

pub struct ModelCalls {
    providers: Providers,
    /// A `gateway:` section is configured: cloud providers are reached through it only.
    gateway: bool,
    book: AddressBook,
    resolver: Resolver,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// Rules whose quotas the kernel meters at connect (their outcome comes with the event).
    pub kernel_quotas: HashSet<String>,
}

impl ModelCalls {
    pub fn new(config: &Config) -> ModelCalls {
        let providers = config.providers();
        let (hosts_path, resolv_path) = config.resolver_files();
        let hosts = HostsFile::load(&hosts_path).unwrap_or_else(|e| {
            if !providers.host_names().is_empty() {
                warn!("oknekd: providers: {}: {e}", hosts_path.display());
            }
            HostsFile::default()
        });
        let conf = ResolvConf::load(&resolv_path).unwrap_or_else(|e| {
            if !providers.host_names().is_empty() {
                warn!("oknekd: providers: {}: {e}", resolv_path.display());
            }
            ResolvConf::default()
        });
        let mut resolver = Resolver::new(hosts, conf, Default::default());
        for name in providers.host_names() {
            resolver.watch(&name);
        }
        let book = AddressBook::build(&providers, &resolver);
        ModelCalls {
            providers,
            gateway: config.gateway.is_some(),
            book,
            resolver,
            v4: None,
            v6: None,
            kernel_quotas: HashSet::new(),
        }
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    pub fn book(&self) -> &AddressBook {
        &self.book
    }

    pub fn gateway_configured(&self) -> bool {
        self.gateway
    }

    /// Opens the resolver's sockets (only when some provider is named by host) and registers
    /// them with `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if self.providers.host_names().is_empty() {
            return Ok(());
        }
        let mut v4 = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        registry.register(&mut v4, token, Interest::READABLE)?;
        self.v4 = Some(v4);
        // IPv6 nameservers only where the host has IPv6.
        if let Ok(mut v6) = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))) {
            registry.register(&mut v6, token, Interest::READABLE)?;
            self.v6 = Some(v6);
        }
        Ok(())
    }

    /// Sends the queries that are due.
    pub fn poll_resolver(&mut self, now: Instant) {
        for query in self.resolver.poll(now) {
            let socket = if query.server.is_ipv6() {
                self.v6.as_ref()
            } else {
                self.v4.as_ref()
            };
            // A send that fails counts as a timed-out attempt: the resolver retries.
            if let Some(socket) = socket {
                let _ = socket.send_to(&query.datagram, query.server);
            }
        }
    }

    /// Reads every waiting answer. Returns true when the address book changed.
    pub fn on_readable(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let mut buf = [0u8; 1500];
        for socket in [self.v4.as_ref(), self.v6.as_ref()].into_iter().flatten() {
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                changed |= self.resolver.feed(from, &buf[..n], now);
            }
        }
        if changed {
            self.book = AddressBook::build(&self.providers, &self.resolver);
        }
        changed
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.resolver.next_deadline()
    }

    /// The `model_call` an open of a weights file is: provider `local`, the file as
    /// `weights` and its name as the model (the file is the model).
    pub fn weights_call(event: &Event) -> Option<Event> {
        let Action::Open { path, .. } = &event.action else {
            return None;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        let lower = name.to_ascii_lowercase();
        if !WEIGHTS_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
            return None;
        }
        Some(Event {
            action: Action::ModelCall {
                provider: LOCAL_WEIGHTS_PROVIDER.to_owned(),
                model: Some(name.to_owned()),
                api: None,
                dest: None,
                weights: Some(path.clone()),
            },
            ..event.clone()
        })
    }

    /// The provider a connect goes to, if it is one.
    pub fn provider_of(&self, event: &Event) -> Option<&Provider> {
        let Action::Connect { dest } = &event.action else {
            return None;
        };
        self.book
            .provider_of(dest)
            .and_then(|name| self.providers.get(name))
    }

    /// The `model_call` a connect is, and whether the provider is reached through the gateway
    /// only (the connect must be refused). The model is not visible at connect.
    pub fn model_call(&self, event: &Event) -> Option<(Event, bool)> {
        let provider = self.provider_of(event)?;
        let Action::Connect { dest } = &event.action else {
            return None;
        };
        let call = Event {
            action: Action::ModelCall {
                provider: provider.name.clone(),
                model: None,
                api: Some(provider.api.name().to_owned()),
                dest: Some(dest.clone()),
                weights: None,
            },
            ..event.clone()
        };
        Some((call, provider.gateway_only(self.gateway)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oknek_event::{Mechanism, Process, Timestamp};

    fn open(path: &str) -> Event {
        Event {
            time: Timestamp::from_secs(1),
            source: Mechanism::Preload,
            process: Process::default(),
            action: Action::Open {
                path: path.to_owned(),
                flags: 0,
                mode: 0,
            },
        }
    }

    #[test]
    fn opening_weights_is_a_model_call_of_the_local_provider() {
        let call = ModelCalls::weights_call(&open("/srv/models/Llama-3-8B.Q4_K_M.GGUF")).unwrap();
        let Action::ModelCall {
            provider,
            model,
            weights,
            ..
        } = &call.action
        else {
            panic!("{call:?}");
        };
        assert_eq!(provider, "local");
        assert_eq!(model.as_deref(), Some("Llama-3-8B.Q4_K_M.GGUF"));
        assert_eq!(
            weights.as_deref(),
            Some("/srv/models/Llama-3-8B.Q4_K_M.GGUF")
        );
        assert!(ModelCalls::weights_call(&open("/home/a/notes.txt")).is_none());
        assert!(ModelCalls::weights_call(&open("/home/a/gguf")).is_none());
        let site = "/usr/lib/python3/dist-packages/distutils-precedence.pth";
        assert!(ModelCalls::weights_call(&open(site)).is_none());
    }
}
