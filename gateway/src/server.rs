//! Accepting agents, authorising each request with oknekd, forwarding what is allowed.
//!
//! One thread per client connection (blocking I/O): the gateway is its own process precisely so
//! that HTTP parsing, TLS and slow upstreams never share a thread with the daemon's loop.
//! Routing: the first path segment names the provider (`/openai/v1/chat/completions` goes to
//! provider `openai` as `/v1/chat/completions`), so an SDK's base URL is
//! `http://127.0.0.1:8088/openai/v1`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{self, Refusal};
use crate::authz::{self, Decision, ModelCallRequest, Verdict};
use crate::config::{Config, Listen};
use crate::http::{self, Conn, Framing, HttpError, Request, ResponseHead};
use crate::peer::{self, Caller, PeerError};
use crate::providers::{ApiStyle, Provider, Resolver};
use crate::upstream::{self, UpstreamError, Upstreams};
use crate::usage::{BodyFormat, UsageReport, UsageReporter, UsageScanner};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("reading {what}: {source}")]
    Files { what: String, source: io::Error },
    #[error("listening on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: String },
}

/// The client's end, over TCP or the unix socket.
enum Client {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Client {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Client::Tcp(s) => s.read(buf),
            Client::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Client::Tcp(s) => s.write(buf),
            Client::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Client {
    fn shutdown(&self) {
        let _ = match self {
            Client::Tcp(s) => s.shutdown(Shutdown::Both),
            Client::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

pub struct Gateway {
    config: Config,
    upstreams: Upstreams,
    active: AtomicUsize,
    usage: UsageReporter,
}

/// Resolves the providers' names, binds every listener and serves until killed.
pub fn serve(config: Config) -> Result<(), ServeError> {
    let gateway = Arc::new(start(config)?);
    let mut threads = Vec::new();
    for listen in gateway.config.listen.clone() {
        let gw = Arc::clone(&gateway);
        match listen {
            Listen::Unix(path) => {
                let listener = bind_unix(&path)?;
                eprintln!("oknek-gateway: listening on {}", path.display());
                threads.push(std::thread::spawn(move || accept_unix(gw, listener)));
            }
            Listen::Tcp(addr) => {
                let listener = TcpListener::bind(addr).map_err(|source| ServeError::Listen {
                    addr: addr.to_string(),
                    source,
                })?;
                let bound = listener.local_addr().map_or(addr, |a| a);
                eprintln!("oknek-gateway: listening on {bound}");
                threads.push(std::thread::spawn(move || accept_tcp(gw, listener)));
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn start(config: Config) -> Result<Gateway, ServeError> {
    let s = &config.settings;
    let mut resolver = Resolver::from_files(&s.hosts_file, &s.resolv_conf).map_err(|source| {
        ServeError::Files {
            what: format!("{} / {}", s.hosts_file.display(), s.resolv_conf.display()),
            source,
        }
    })?;
    for name in config.providers.host_names() {
        resolver.watch(&name);
    }
    // The first answers before serving; afterwards a thread keeps them fresh (TTLs).
    let _ = resolver.settle_blocking(Duration::from_secs(5));
    for name in config.providers.host_names() {
        if resolver.addresses(&name).is_empty() {
            eprintln!(
                "oknek-gateway: warning: {name} has no address yet; calls to it fail until it resolves"
            );
        }
    }
    let resolver = Arc::new(Mutex::new(resolver));
    let refresher = Arc::clone(&resolver);
    std::thread::spawn(move || keep_resolved(refresher));
    let tls = upstream::tls_config(s.system_roots, s.ca_file.as_deref())?;
    let upstreams = Upstreams::new(tls, resolver, config.upstream_timeout());
    let usage = UsageReporter::start(config.control_socket.clone(), config.decision_timeout());
    Ok(Gateway {
        config,
        upstreams,
        active: AtomicUsize::new(0),
        usage,
    })
}

/// Re-asks names as their answers expire. Works on a copy so lookups never wait for DNS.
fn keep_resolved(resolver: Arc<Mutex<Resolver>>) {
    loop {
        let due = {
            let r = resolver.lock().unwrap_or_else(|e| e.into_inner());
            r.next_deadline()
        };
        let wait = due
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        std::thread::sleep(wait);
        let mut copy = {
            let r = resolver.lock().unwrap_or_else(|e| e.into_inner());
            r.clone()
        };
        let _ = copy.settle_blocking(Duration::from_secs(10));
        *resolver.lock().unwrap_or_else(|e| e.into_inner()) = copy;
    }
}

fn bind_unix(path: &std::path::Path) -> Result<UnixListener, ServeError> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(ServeError::NotASocket {
                path: path.display().to_string(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let err = |source| ServeError::Listen {
        addr: path.display().to_string(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(err)?;
    // Every agent may connect: who it is comes from SO_PEERCRED, not from access to the socket.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

fn accept_unix(gw: Arc<Gateway>, listener: UnixListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let caller = peer::unix_peer(&stream);
        spawn_connection(&gw, Client::Unix(stream), move || caller);
    }
}

fn accept_tcp(gw: Arc<Gateway>, listener: TcpListener) {
    let local = listener.local_addr().ok();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr();
        // The socket-table search reads /proc: done on the connection's thread, not here.
        let identify = move || match (local, peer) {
            (Some(local), Ok(peer)) => peer::tcp_peer(local, peer),
            (_, Err(e)) => Err(PeerError::Table(e)),
            (None, Ok(_)) => Err(PeerError::Table(io::Error::other("no local address"))),
        };
        spawn_connection(&gw, Client::Tcp(stream), identify);
    }
}

fn spawn_connection(
    gw: &Arc<Gateway>,
    mut client: Client,
    identify: impl FnOnce() -> Result<Caller, PeerError> + Send + 'static,
) {
    if gw.active.fetch_add(1, Ordering::SeqCst) >= gw.config.settings.max_connections {
        gw.active.fetch_sub(1, Ordering::SeqCst);
        let body = api::error_body(
            ApiStyle::Openai,
            Refusal::Unavailable,
            "oknek gateway: too many connections",
        );
        let _ = client.write_all(&http::simple_response(
            503,
            "Service Unavailable",
            body.to_string().as_bytes(),
            false,
        ));
        return;
    }
    let gw = Arc::clone(gw);
    std::thread::spawn(move || {
        let mut conn = Conn::new(client);
        let caller = identify().map_err(|e| e.to_string());
        while let Ok(true) = gw.exchange(&mut conn, &caller) {}
        conn.stream.shutdown();
        gw.active.fetch_sub(1, Ordering::SeqCst);
    });
}

/// One line per model call on stderr: who, what, the verdict, how it ended.
struct CallLog<'a> {
    caller: Option<Caller>,
    provider: &'a str,
    model: Option<&'a str>,
    started: Instant,
}

impl CallLog<'_> {
    fn line(&self, outcome: &str) {
        let who = self.caller.map_or("caller ?".to_owned(), |c| {
            format!("pid {} uid {}", c.pid, c.uid)
        });
        eprintln!(
            "oknek-gateway: {who} {}/{} {outcome} ({:.1} ms)",
            self.provider,
            self.model.unwrap_or("?"),
            self.started.elapsed().as_secs_f64() * 1e3
        );
    }
}

impl Gateway {
    /// Serves one request on a client connection; `Ok(true)` to read the next one.
    fn exchange(
        &self,
        conn: &mut Conn<Client>,
        caller: &Result<Caller, String>,
    ) -> Result<bool, HttpError> {
        let head = conn.read_head()?;
        let started = Instant::now();
        let req = match Request::parse(&head) {
            Ok(r) => r,
            Err(e) => {
                refuse(
                    conn,
                    ApiStyle::Openai,
                    Refusal::BadRequest,
                    &format!("oknek gateway: {e}"),
                    false,
                )?;
                return Ok(false);
            }
        };
        let keep_alive = req.keep_alive();
        let path = req.target.clone();
        let (provider_name, rest) = split_provider(&path);
        let Some(provider) = self.config.providers.get(provider_name) else {
            let names: Vec<&str> = self
                .config
                .providers
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            let msg = format!(
                "oknek gateway: no provider named {provider_name:?}; use a base URL of the form \
                 http://<gateway>/<provider>/…, with one of: {}",
                names.join(", ")
            );
            // The body is not read: close instead of guessing where the next request starts.
            refuse(conn, ApiStyle::Openai, Refusal::NotFound, &msg, false)?;
            return Ok(false);
        };
        let api = provider.api;
        let limit = self.config.settings.max_body_bytes;
        let body = match req.framing() {
            Ok(Framing::Length(n)) if n as usize > limit => {
                let msg = format!(
                    "oknek gateway: request body of {n} bytes is over the limit of {limit} bytes (gateway.max_body_bytes)"
                );
                refuse(conn, api, Refusal::TooLarge, &msg, false)?;
                return Ok(false);
            }
            Ok(framing) => {
                if req.expects_continue() && framing != Framing::None {
                    conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                }
                let read = match framing {
                    Framing::Length(n) => conn.read_exact_body(n as usize),
                    Framing::Chunked => conn.read_chunked_body(limit),
                    _ => Ok(Vec::new()),
                };
                match read {
                    Ok(b) => b,
                    Err(HttpError::TooLarge { limit }) => {
                        let msg = format!(
                            "oknek gateway: request body is over the limit of {limit} bytes (gateway.max_body_bytes)"
                        );
                        refuse(conn, api, Refusal::TooLarge, &msg, false)?;
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => {
                refuse(
                    conn,
                    api,
                    Refusal::BadRequest,
                    &format!("oknek gateway: {e}"),
                    false,
                )?;
                return Ok(false);
            }
        };
        let model = api::model_of(api, rest, &body);
        let mut log = CallLog {
            caller: caller.as_ref().ok().copied(),
            provider: &provider.name,
            model: model.as_deref(),
            started,
        };
        let caller = match caller {
            Ok(c) => *c,
            Err(e) => {
                let msg = format!(
                    "oknek gateway: the calling process cannot be identified ({e}); the call is refused"
                );
                log.line("refused: caller unknown");
                refuse(conn, api, Refusal::Unavailable, &msg, keep_alive)?;
                return Ok(keep_alive);
            }
        };
        log.caller = Some(caller);
        let request = ModelCallRequest {
            cmd: "model_call",
            pid: caller.pid,
            provider: &provider.name,
            model: model.as_deref(),
            api: api.name(),
            dest: self.upstreams.first_dest(provider),
        };
        let decision = match authz::ask(
            &self.config.control_socket,
            &request,
            self.config.decision_timeout(),
        ) {
            Ok(d) => d,
            Err(e) => {
                let msg = format!(
                    "oknek gateway: no verdict for this model call ({e}); the call is refused"
                );
                log.line("refused: no verdict");
                refuse(conn, api, Refusal::Unavailable, &msg, keep_alive)?;
                return Ok(keep_alive);
            }
        };
        if decision.verdict == Verdict::Block {
            let (refusal, msg) = denial_message(&decision, provider, model.as_deref());
            log.line(&format!(
                "block {}",
                decision.deciding_block().map_or("-", |r| r.id.as_str())
            ));
            refuse(conn, api, refusal, &msg, keep_alive)?;
            return Ok(keep_alive);
        }
        let verdict = if decision.verdict == Verdict::Warn {
            "warn"
        } else {
            "allow"
        };
        let target = if rest.is_empty() { "/" } else { rest };
        self.forward(
            conn, &req, target, &body, provider, keep_alive, &log, verdict, &decision,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        conn: &mut Conn<Client>,
        req: &Request,
        target: &str,
        body: &[u8],
        provider: &Provider,
        keep_alive: bool,
        log: &CallLog<'_>,
        verdict: &str,
        decision: &Decision,
    ) -> Result<bool, HttpError> {
        // A pooled connection the provider closed meanwhile fails at once: retry on a new one.
        let mut fresh = false;
        let (mut up, head) = loop {
            let attempt = if fresh {
                self.upstreams.connect_new(provider)
            } else {
                self.upstreams.connect(provider)
            };
            let mut up = match attempt {
                Ok(c) => c,
                Err(e) => {
                    log.line(&format!("{verdict}, upstream unreachable"));
                    let msg = format!("oknek gateway: provider {} unreachable: {e}", provider.name);
                    refuse(conn, provider.api, Refusal::BadGateway, &msg, keep_alive)?;
                    return Ok(keep_alive);
                }
            };
            let bytes = http::upstream_request(req, target, &up.host, body);
            let sent = up
                .stream
                .stream
                .write_all(&bytes)
                .and_then(|_| up.stream.stream.flush());
            let head = match sent {
                Ok(()) => up.stream.read_head(),
                Err(e) => Err(HttpError::Io(e)),
            };
            match head {
                Ok(h) => break (up, h),
                Err(_) if up.reused && !fresh => fresh = true,
                Err(e) => {
                    log.line(&format!("{verdict}, upstream failed: {e}"));
                    let msg = format!("oknek gateway: provider {} failed: {e}", provider.name);
                    refuse(conn, provider.api, Refusal::BadGateway, &msg, keep_alive)?;
                    return Ok(keep_alive);
                }
            }
        };
        let parsed = match ResponseHead::parse(&head, &req.method) {
            Ok(p) => p,
            Err(e) => {
                log.line(&format!("{verdict}, bad upstream response: {e}"));
                let msg = format!(
                    "oknek gateway: provider {} sent a malformed response: {e}",
                    provider.name
                );
                refuse(conn, provider.api, Refusal::BadGateway, &msg, false)?;
                return Ok(false);
            }
        };
        // The head goes out as the provider wrote it; the body follows as it arrives.
        conn.stream.write_all(&head)?;
        let mut scanner = UsageScanner::new(if parsed.event_stream {
            BodyFormat::EventStream
        } else {
            BodyFormat::Json
        });
        let relayed = up
            .stream
            .relay_body(parsed.framing, &mut conn.stream, &mut |b| scanner.feed(b));
        let usage = scanner.finish();
        // Successful calls are always reported, usage unknown included; errors when they cost.
        if (200..300).contains(&parsed.status) || usage.is_known() {
            self.usage.report(UsageReport {
                cmd: "model_usage",
                pid: log.caller.map_or(0, |c| c.pid),
                provider: provider.name.clone(),
                model: log.model.map(str::to_owned),
                api: provider.api.name(),
                dest: Some(up.dest.clone()),
                input_tokens: usage.input,
                output_tokens: usage.output,
                agent: decision.agent.clone(),
                caller: decision.caller.clone(),
            });
        }
        let count = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let reusable = match relayed {
            Ok(r) => r,
            Err(e) => {
                log.line(&format!("{verdict} {}, relay broken: {e}", parsed.status));
                return Ok(false);
            }
        };
        log.line(&format!(
            "{verdict} {} via {} tokens in={} out={}",
            parsed.status,
            up.dest,
            count(usage.input),
            count(usage.output)
        ));
        if reusable && !parsed.closes {
            up.reused = false;
            self.upstreams.checkin(&provider.name, up);
        }
        Ok(keep_alive && !parsed.closes && parsed.framing != Framing::UntilClose)
    }
}

/// `/openai/v1/chat` → (`openai`, `/v1/chat`).
fn split_provider(target: &str) -> (&str, &str) {
    let path = target.strip_prefix('/').unwrap_or(target);
    match path.find(['/', '?']) {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    }
}

fn denial_message(
    decision: &Decision,
    provider: &Provider,
    model: Option<&str>,
) -> (Refusal, String) {
    let rule = decision.deciding_block();
    let id = rule.map_or("?", |r| r.id.as_str());
    let title = rule.map_or("", |r| r.title.as_str());
    let what = format!(
        "provider {}, model {}",
        provider.name,
        model.unwrap_or("(not named)")
    );
    if decision.quota_exhausted() {
        (
            Refusal::RateLimited,
            format!(
                "oknek: model call quota exhausted by rule {id} ({title}); {what}; try again later"
            ),
        )
    } else {
        (
            Refusal::Forbidden,
            format!("oknek: model call blocked by rule {id} ({title}); {what}"),
        )
    }
}

fn refuse(
    conn: &mut Conn<Client>,
    api: ApiStyle,
    refusal: Refusal,
    message: &str,
    keep_alive: bool,
) -> Result<(), HttpError> {
    let (status, reason) = refusal.status();
    let body = api::error_body(api, refusal, message).to_string();
    conn.stream.write_all(&http::simple_response(
        status,
        reason,
        body.as_bytes(),
        keep_alive,
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_segment_names_the_provider() {
        assert_eq!(
            split_provider("/openai/v1/chat/completions"),
            ("openai", "/v1/chat/completions")
        );
        assert_eq!(split_provider("/ollama?x=1"), ("ollama", "?x=1"));
        assert_eq!(split_provider("/"), ("", ""));
    }
}
