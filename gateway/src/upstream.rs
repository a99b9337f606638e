//! Connections to providers: TCP, TLS (rustls with the ring provider) or a unix socket, with a
//! small pool of idle keep-alive connections per provider.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::providers::{Endpoint, Provider, Resolver};

/// The system trust bundle (Debian/Ubuntu path; `SSL_CERT_FILE` overrides, as for OpenSSL).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Idle connections kept per provider.
const POOL_PER_PROVIDER: usize = 16;
/// An idle connection older than this is not reused (servers close idle ones after ~60 s).
const POOL_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("reading trusted certificates from {path}: {reason}")]
    Trust { path: PathBuf, reason: String },
    #[error("no certificate to trust: the system bundle is off or empty and no ca_file is set")]
    NoRoots,
    #[error("{endpoint} has no address (the name did not resolve)")]
    NoAddress { endpoint: String },
    #[error("connecting to {endpoint}: {source}")]
    Connect { endpoint: String, source: io::Error },
    #[error("TLS setup for {endpoint}: {reason}")]
    Tls { endpoint: String, reason: String },
}

/// One connection to a provider.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => match s.read(buf) {
                // Servers that close without close_notify end the body all the same; the
                // framing check (Content-Length, chunks) catches a truncated one.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A connection and where it goes.
pub struct Connection {
    pub stream: crate::http::Conn<Stream>,
    /// `ip:port` or `unix:/path`, as recorded in the decision.
    pub dest: String,
    /// The value for the Host header.
    pub host: String,
    /// Whether it came from the pool (and may have been closed by the server meanwhile).
    pub reused: bool,
}

/// TLS settings and the pool.
pub struct Upstreams {
    tls: Arc<rustls::ClientConfig>,
    resolver: Arc<Mutex<Resolver>>,
    timeout: Duration,
    idle: Mutex<HashMap<String, Vec<(Instant, Connection)>>>,
}

/// The trust store: the system bundle (unless switched off) plus an extra CA file.
pub fn tls_config(
    system_roots: bool,
    ca_file: Option<&Path>,
) -> Result<rustls::ClientConfig, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut add_file = |path: &Path, required: bool| -> Result<(), UpstreamError> {
        let trust = |reason: String| UpstreamError::Trust {
            path: path.to_owned(),
            reason,
        };
        if !required && !path.exists() {
            return Ok(());
        }
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| trust(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| trust(e.to_string()))?;
        if required && certs.is_empty() {
            return Err(trust("no PEM certificate in it".into()));
        }
        let (_added, _ignored) = roots.add_parsable_certificates(certs);
        Ok(())
    };
    if system_roots {
        let bundle = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SYSTEM_BUNDLE));
        add_file(&bundle, false)?;
    }
    if let Some(ca) = ca_file {
        add_file(ca, true)?;
    }
    if roots.is_empty() {
        return Err(UpstreamError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls {
            endpoint: "-".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

impl Upstreams {
    pub fn new(
        tls: rustls::ClientConfig,
        resolver: Arc<Mutex<Resolver>>,
        timeout: Duration,
    ) -> Upstreams {
        Upstreams {
            tls: Arc::new(tls),
            resolver,
            timeout,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Where a new connection would go first: for the decision, made before connecting.
    pub fn first_dest(&self, provider: &Provider) -> Option<String> {
        self.candidates(provider).into_iter().next().map(|(d, _)| d)
    }

    fn candidates(&self, provider: &Provider) -> Vec<(String, Target)> {
        let resolver = self.resolver.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for e in &provider.endpoints {
            match e {
                Endpoint::Addr(a) => out.push((a.to_string(), Target::Inet(*a, None))),
                Endpoint::Unix(p) => {
                    out.push((format!("unix:{}", p.display()), Target::Unix(p.clone())))
                }
                Endpoint::Host { host, port } => {
                    for ip in resolver.addresses(host) {
                        let a = SocketAddr::new(ip, *port);
                        out.push((a.to_string(), Target::Inet(a, Some(host.clone()))));
                    }
                }
            }
        }
        out
    }

    /// An idle pooled connection, or a new one (endpoints and their addresses in order).
    pub fn connect(&self, provider: &Provider) -> Result<Connection, UpstreamError> {
        if let Some(c) = self.checkout(&provider.name) {
            return Ok(c);
        }
        self.connect_new(provider)
    }

    pub fn connect_new(&self, provider: &Provider) -> Result<Connection, UpstreamError> {
        let candidates = self.candidates(provider);
        let mut last = None;
        for (dest, target) in candidates {
            match self.open(provider, &dest, &target) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::NoAddress {
            endpoint: provider
                .endpoints
                .first()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        }))
    }

    fn open(
        &self,
        provider: &Provider,
        dest: &str,
        target: &Target,
    ) -> Result<Connection, UpstreamError> {
        let connect_err = |source| UpstreamError::Connect {
            endpoint: dest.to_owned(),
            source,
        };
        let (stream, host) = match target {
            Target::Unix(path) => {
                let s = UnixStream::connect(path).map_err(connect_err)?;
                s.set_read_timeout(Some(self.timeout))
                    .map_err(connect_err)?;
                (Stream::Unix(s), "localhost".to_owned())
            }
            Target::Inet(addr, name) => {
                let tcp =
                    TcpStream::connect_timeout(addr, self.timeout.min(Duration::from_secs(10)))
                        .map_err(connect_err)?;
                tcp.set_nodelay(true).map_err(connect_err)?;
                tcp.set_read_timeout(Some(self.timeout))
                    .map_err(connect_err)?;
                let host_header = match (name, addr.port(), provider.tls) {
                    (Some(n), 443, true) | (Some(n), 80, false) => n.clone(),
                    (Some(n), p, _) => format!("{n}:{p}"),
                    (None, _, _) => addr.to_string(),
                };
                if provider.tls {
                    let server_name = match name {
                        Some(n) => {
                            ServerName::try_from(n.clone()).map_err(|e| UpstreamError::Tls {
                                endpoint: dest.to_owned(),
                                reason: e.to_string(),
                            })?
                        }
                        None => ServerName::IpAddress(addr.ip().into()),
                    };
                    let conn = rustls::ClientConnection::new(Arc::clone(&self.tls), server_name)
                        .map_err(|e| UpstreamError::Tls {
                            endpoint: dest.to_owned(),
                            reason: e.to_string(),
                        })?;
                    (
                        Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))),
                        host_header,
                    )
                } else {
                    (Stream::Tcp(tcp), host_header)
                }
            }
        };
        Ok(Connection {
            stream: crate::http::Conn::new(stream),
            dest: dest.to_owned(),
            host,
            reused: false,
        })
    }

    fn checkout(&self, provider: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(provider)?;
        while let Some((since, mut c)) = list.pop() {
            if since.elapsed() < POOL_IDLE {
                c.reused = true;
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection whose last response ended cleanly.
    pub fn checkin(&self, provider: &str, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(provider.to_owned()).or_default();
        if list.len() < POOL_PER_PROVIDER {
            list.push((Instant::now(), connection));
        }
    }
}

enum Target {
    /// An address, and the host name it was resolved from (TLS server name, Host header).
    Inet(SocketAddr, Option<String>),
    Unix(PathBuf),
}
