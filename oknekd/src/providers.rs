//! Model providers: where agents' model calls go, and which socket addresses those are.
//!
//! ```yaml
//! providers:
//!   - name: openai
//!     kind: cloud                      # cloud | local
//!     api: openai                      # openai | anthropic | google | bedrock | ollama
//!     endpoints: ["api.openai.com:443"]
//!   - name: ollama
//!     kind: local
//!     api: ollama
//!     endpoints: ["127.0.0.1:11434", "unix:/run/ollama/ollama.sock"]
//! ```
//!
//! Cloud endpoints are host names (or addresses) with a port and are reached over TLS; local
//! endpoints are `address:port` or a unix socket and are plain HTTP unless `tls: true`.
//!
//! Host names become address sets without NSS: the static daemon must not `dlopen` resolver
//! modules, so names are looked up in an /etc/hosts-style file first and otherwise asked of the
//! nameservers in /etc/resolv.conf by a small DNS stub ([`Resolver`]). The stub does no I/O of
//! its own: it hands out query datagrams, is fed answer datagrams and says when it next needs
//! attention, so it runs inside the daemon's one event loop. [`AddressBook`] maps the resulting
//! socket addresses back to provider names, which is how a `connect` becomes a `model_call`.
//!
//! This file is also compiled into the model gateway (`gateway/`), which resolves the same
//! providers to forward calls; it therefore depends on nothing but serde, thiserror, libc and
//! the event model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oknek_event::SockAddr;
use serde::Deserialize;

/// Where a provider runs, which decides how it may be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// A hosted API, reached over TLS by host name.
    Cloud,
    /// An inference server on this host or network (Ollama, vLLM, llama.cpp, LM Studio).
    Local,
}

/// The wire API a provider speaks: how its requests name the model and how its errors look.
/// Mistral, Azure OpenAI, vLLM, llama.cpp and LM Studio speak `openai`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiStyle {
    Openai,
    Anthropic,
    Google,
    Bedrock,
    Ollama,
}

impl ApiStyle {
    pub fn name(self) -> &'static str {
        match self {
            ApiStyle::Openai => "openai",
            ApiStyle::Anthropic => "anthropic",
            ApiStyle::Google => "google",
            ApiStyle::Bedrock => "bedrock",
            ApiStyle::Ollama => "ollama",
        }
    }
}

/// One `providers:` entry as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub name: String,
    pub kind: ProviderKind,
    pub api: ApiStyle,
    pub endpoints: Vec<String>,
    /// Whether calls are made over TLS; default: cloud yes, local no.
    #[serde(default)]
    pub tls: Option<bool>,
    /// Whether agents may reach this provider only through the model gateway, their direct
    /// connects refused; default: cloud providers yes when a `gateway:` is configured, local
    /// providers no (their plaintext calls are judged where they are made).
    #[serde(default)]
    pub via_gateway: Option<bool>,
}

/// The `gateway:` key, read by the model gateway (`oknek-gateway`). The daemon parses it too:
/// its presence means agents reach cloud providers through the gateway only, and its resolver
/// files are the ones the daemon resolves provider names with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Unix socket paths (absolute) and loopback `address:port`s to accept agents on.
    pub listen: Vec<String>,
    /// The daemon's control socket; default `<paths.runtime_dir>/control.sock`.
    pub control_socket: Option<PathBuf>,
    /// PEM certificates trusted for upstream TLS besides the system bundle.
    pub ca_file: Option<PathBuf>,
    /// Whether the system trust bundle is used (set false to trust only `ca_file`).
    pub system_roots: bool,
    pub hosts_file: PathBuf,
    pub resolv_conf: PathBuf,
    /// Requests with larger bodies are refused with 413 before anything is forwarded.
    pub max_body_bytes: usize,
    /// How long to wait for the daemon's verdict before refusing (fail closed).
    pub decision_timeout_ms: u64,
    /// How long an upstream may stay silent (connect, or between two reads of a response).
    pub upstream_timeout_s: u64,
    /// Concurrent client connections; more are answered 503.
    pub max_connections: usize,
}

impl Default for GatewaySettings {
    fn default() -> GatewaySettings {
        GatewaySettings {
            listen: vec!["/run/oknek/gateway.sock".into()],
            control_socket: None,
            ca_file: None,
            system_roots: true,
            hosts_file: PathBuf::from("/etc/hosts"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            max_body_bytes: 8 << 20,
            decision_timeout_ms: 2000,
            upstream_timeout_s: 300,
            max_connections: 512,
        }
    }
}

/// Where a provider listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A host name and port, resolved to addresses (and used as the TLS server name).
    Host { host: String, port: u16 },
    /// A literal address and port.
    Addr(SocketAddr),
    /// A unix socket path (`unix:/run/ollama.sock`).
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses `host:port`, `1.2.3.4:port`, `[::1]:port`, `unix:/path` or `/path`.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text
            .strip_prefix("unix:")
            .or_else(|| text.starts_with('/').then_some(text))
        {
            if !path.starts_with('/') {
                return Err("a unix socket path must be absolute".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err("port 0 is not a port anyone listens on".into());
            }
            return Ok(Endpoint::Addr(addr));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or("expected host:port, address:port or unix:/path (the port is required)")?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
        if !valid_host_name(host) {
            return Err(format!("{host:?} is not a valid host name"));
        }
        Ok(Endpoint::Host {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Host { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Addr(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
fn valid_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // All-numeric names would be addresses that failed to parse (`1.2.3:443`).
        && !host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// A validated provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub api: ApiStyle,
    pub endpoints: Vec<Endpoint>,
    pub tls: bool,
    /// As written; [`Provider::gateway_only`] applies the default.
    pub via_gateway: Option<bool>,
}

impl Provider {
    /// Whether agents' direct connects to this provider are refused (see
    /// [`ProviderSpec::via_gateway`]).
    pub fn gateway_only(&self, gateway_configured: bool) -> bool {
        gateway_configured && self.via_gateway.unwrap_or(self.kind == ProviderKind::Cloud)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    #[error("providers[{index}]: name {name:?}: {reason}")]
    Name {
        index: usize,
        name: String,
        reason: &'static str,
    },
    #[error("providers[{index}] ({name}): {reason}")]
    Spec {
        index: usize,
        name: String,
        reason: String,
    },
    #[error("providers[{index}] ({name}): endpoint {endpoint:?}: {reason}")]
    Endpoint {
        index: usize,
        name: String,
        endpoint: String,
        reason: String,
    },
}

/// The validated `providers:` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Providers {
    list: Vec<Provider>,
}

impl Providers {
    /// Checks every spec: names unique and rule-friendly, endpoints well formed, cloud endpoints
    /// reachable by name or address, local ones by address or unix socket.
    pub fn from_specs(specs: &[ProviderSpec]) -> Result<Providers, ProviderError> {
        let mut seen = BTreeSet::new();
        let mut list = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let name_error = |reason| ProviderError::Name {
                index,
                name: spec.name.clone(),
                reason,
            };
            if spec.name.is_empty()
                || spec.name.len() > 64
                || !spec
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            {
                return Err(name_error(
                    "use 1-64 lowercase letters, digits, '-', '_' or '.' (rules match it exactly)",
                ));
            }
            // `local` names the open of weight files in model_call events (R6.weights).
            if spec.name == "local" {
                return Err(name_error(
                    "\"local\" is reserved for local weight files; name the server (e.g. ollama)",
                ));
            }
            if !seen.insert(spec.name.as_str()) {
                return Err(name_error("declared twice"));
            }
            if spec.endpoints.is_empty() {
                return Err(ProviderError::Spec {
                    index,
                    name: spec.name.clone(),
                    reason: "endpoints: at least one endpoint is needed".into(),
                });
            }
            let mut endpoints = Vec::with_capacity(spec.endpoints.len());
            for text in &spec.endpoints {
                let endpoint_error = |reason: String| ProviderError::Endpoint {
                    index,
                    name: spec.name.clone(),
                    endpoint: text.clone(),
                    reason,
                };
                let endpoint = Endpoint::parse(text).map_err(endpoint_error)?;
                match (&endpoint, spec.kind) {
                    (Endpoint::Unix(_), ProviderKind::Cloud) => {
                        return Err(endpoint_error(
                            "a cloud provider is reached over the network, not a unix socket"
                                .into(),
                        ));
                    }
                    (Endpoint::Host { .. }, ProviderKind::Local) => {
                        return Err(endpoint_error(
                            "a local provider is declared by address:port or unix:/path, so \
                             the kernel can match it without a name lookup"
                                .into(),
                        ));
                    }
                    _ => {}
                }
                if endpoints.contains(&endpoint) {
                    return Err(endpoint_error("listed twice".into()));
                }
                endpoints.push(endpoint);
            }
            list.push(Provider {
                name: spec.name.clone(),
                kind: spec.kind,
                api: spec.api,
                tls: spec.tls.unwrap_or(spec.kind == ProviderKind::Cloud),
                via_gateway: spec.via_gateway,
                endpoints,
            });
        }
        // One address may not belong to two providers: a connect would be ambiguous.
        let mut owner: HashMap<&Endpoint, &str> = HashMap::new();
        for (index, p) in list.iter().enumerate() {
            for e in &p.endpoints {
                if let Some(other) = owner.insert(e, &p.name) {
                    return Err(ProviderError::Endpoint {
                        index,
                        name: p.name.clone(),
                        endpoint: e.to_string(),
                        reason: format!("already an endpoint of provider {other}"),
                    });
                }
            }
        }
        Ok(Providers { list })
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every host name an endpoint uses: what the resolver must keep fresh.
    pub fn host_names(&self) -> BTreeSet<String> {
        self.list
            .iter()
            .flat_map(|p| &p.endpoints)
            .filter_map(|e| match e {
                Endpoint::Host { host, .. } => Some(host.clone()),
                _ => None,
            })
            .collect()
    }
}

// -------------------------------------------------------------------------------------------------
// /etc/hosts
// -------------------------------------------------------------------------------------------------

/// An /etc/hosts-style table: `address name [alias…]`, `#` comments. Names are matched
/// case-insensitively; a name listed here is never asked of DNS (as with `hosts: files dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsFile {
    names: BTreeMap<String, Vec<IpAddr>>,
}

impl HostsFile {
    /// Lenient like the C library: lines that do not parse are skipped.
    pub fn parse(text: &str) -> HostsFile {
        let mut names: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(addr) = words.next().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            for name in words {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                let addrs = names.entry(name).or_default();
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        HostsFile { names }
    }

    /// A missing file is an empty table, as for the C library.
    pub fn load(path: &Path) -> std::io::Result<HostsFile> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(HostsFile::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostsFile::default()),
            Err(e) => Err(e),
        }
    }

    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        self.names
            .get(&name.trim_end_matches('.').to_ascii_lowercase())
            .map(Vec::as_slice)
    }
}

// -------------------------------------------------------------------------------------------------
// /etc/resolv.conf
// -------------------------------------------------------------------------------------------------

/// What the stub takes from /etc/resolv.conf: `nameserver` lines (at most three, as the C
/// library) and `options timeout:N attempts:N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub attempts: u32,
}

impl Default for ResolvConf {
    fn default() -> ResolvConf {
        ResolvConf {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A `%zone` suffix of a link-local address is dropped: std cannot parse it.
                    let Some(addr) = words
                        .next()
                        .and_then(|a| a.split('%').next())
                        .and_then(|a| a.parse::<IpAddr>().ok())
                    else {
                        continue;
                    };
                    if conf.nameservers.len() < 3 {
                        conf.nameservers.push(SocketAddr::new(addr, 53));
                    }
                }
                Some("options") => {
                    for option in words {
                        if let Some(n) =
                            option.strip_prefix("timeout:").and_then(|n| n.parse().ok())
                        {
                            conf.timeout = Duration::from_secs(u64::clamp(n, 1, 30));
                        } else if let Some(n) = option
                            .strip_prefix("attempts:")
                            .and_then(|n| n.parse().ok())
                        {
                            conf.attempts = u32::clamp(n, 1, 5);
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// A missing file means no nameservers (names then resolve only through the hosts file).
    pub fn load(path: &Path) -> std::io::Result<ResolvConf> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(ResolvConf::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ResolvConf::default()),
            Err(e) => Err(e),
        }
    }
}

// -------------------------------------------------------------------------------------------------
// DNS wire format (RFC 1035, A and AAAA only)
// -------------------------------------------------------------------------------------------------

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u8 = 3;

/// Which address family a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn qtype(self) -> u16 {
        match self {
            Family::V4 => TYPE_A,
            Family::V6 => TYPE_AAAA,
        }
    }
}

/// A recursive query (RD set) for one name and type.
pub fn encode_query(id: u16, name: &str, family: Family) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // standard query, recursion desired
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&family.qtype().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// What a response says about the question it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: u16,
    pub name: String,
    pub family: Family,
    /// The addresses (empty for NXDOMAIN or no data).
    pub addrs: Vec<IpAddr>,
    /// How long the answer may be kept: the smallest TTL of the records used, or for an empty
    /// answer the SOA minimum when the server sent one.
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("truncated or malformed DNS message")]
    Malformed,
    #[error("not a response to a standard query")]
    NotAResponse,
    #[error("the server answered with rcode {0}")]
    Rcode(u8),
    #[error("the answer was truncated (TC); TCP fallback is not supported")]
    Truncated,
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, DnsError> {
        let b = *self.msg.get(self.pos).ok_or(DnsError::Malformed)?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Result<u32, DnsError> {
        Ok(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], DnsError> {
        let end = self.pos.checked_add(n).ok_or(DnsError::Malformed)?;
        let b = self.msg.get(self.pos..end).ok_or(DnsError::Malformed)?;
        self.pos = end;
        Ok(b)
    }

    /// A possibly compressed name, lowercased, without the trailing dot.
    fn name(&mut self) -> Result<String, DnsError> {
        let mut labels: Vec<String> = Vec::new();
        let mut pos = self.pos;
        let mut jumped = false;
        // Bounded: a message of 512..65535 bytes cannot hold more pointers than this honestly.
        for _ in 0..128 {
            let len = *self.msg.get(pos).ok_or(DnsError::Malformed)?;
            match len {
                0 => {
                    if !jumped {
                        self.pos = pos + 1;
                    }
                    return Ok(labels.join("."));
                }
                l if l & 0xC0 == 0xC0 => {
                    let low = *self.msg.get(pos + 1).ok_or(DnsError::Malformed)?;
                    if !jumped {
                        self.pos = pos + 2;
                    }
                    jumped = true;
                    pos = (usize::from(l & 0x3F) << 8) | usize::from(low);
                }
                l if l & 0xC0 == 0 => {
                    let l = usize::from(l);
                    let label = self
                        .msg
                        .get(pos + 1..pos + 1 + l)
                        .ok_or(DnsError::Malformed)?;
                    labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                    pos += 1 + l;
                }
                _ => return Err(DnsError::Malformed),
            }
        }
        Err(DnsError::Malformed)
    }
}

/// Parses a response to one A or AAAA question. CNAME chains are followed within the answer
/// section; records for other names are ignored.
pub fn decode_answer(msg: &[u8]) -> Result<Answer, DnsError> {
    let mut r = Reader { msg, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    if flags & 0x8000 == 0 || (flags >> 11) & 0xF != 0 {
        return Err(DnsError::NotAResponse);
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError::Truncated);
    }
    let rcode = (flags & 0xF) as u8;
    let qdcount = r.u16()?;
    let ancount = r.u16()?;
    let nscount = r.u16()?;
    let _arcount = r.u16()?;
    if qdcount != 1 {
        return Err(DnsError::Malformed);
    }
    let name = r.name()?;
    let qtype = r.u16()?;
    let _qclass = r.u16()?;
    let family = match qtype {
        TYPE_A => Family::V4,
        TYPE_AAAA => Family::V6,
        _ => return Err(DnsError::Malformed),
    };
    if rcode != 0 && rcode != RCODE_NXDOMAIN {
        return Err(DnsError::Rcode(rcode));
    }
    let mut owners = vec![name.clone()];
    let mut addrs = Vec::new();
    let mut ttl: Option<u32> = None;
    for _ in 0..ancount {
        let owner = r.name()?;
        let rtype = r.u16()?;
        let class = r.u16()?;
        let record_ttl = r.u32()?;
        let len = usize::from(r.u16()?);
        let start = r.pos;
        let data = r.bytes(len)?;
        if class != CLASS_IN || !owners.contains(&owner) {
            continue;
        }
        match (rtype, family) {
            (TYPE_A, Family::V4) if data.len() == 4 => {
                addrs.push(IpAddr::V4(Ipv4Addr::new(
                    data[0], data[1], data[2], data[3],
                )));
            }
            (TYPE_AAAA, Family::V6) if data.len() == 16 => {
                let octets: [u8; 16] = data.try_into().map_err(|_| DnsError::Malformed)?;
                addrs.push(IpAddr::V6(Ipv6Addr::from(octets)));
            }
            (TYPE_CNAME, _) => {
                let mut target = Reader { msg, pos: start };
                owners.push(target.name()?);
            }
            _ => continue,
        }
        ttl = Some(ttl.map_or(record_ttl, |t| t.min(record_ttl)));
    }
    if addrs.is_empty() {
        // Negative caching (RFC 2308): the SOA in the authority section bounds it.
        ttl = None;
        for _ in 0..nscount {
            let _owner = r.name()?;
            let rtype = r.u16()?;
            let _class = r.u16()?;
            let record_ttl = r.u32()?;
            let len = usize::from(r.u16()?);
            let start = r.pos;
            r.bytes(len)?;
            if rtype == 6 {
                let mut soa = Reader { msg, pos: start };
                soa.name()?;
                soa.name()?;
                soa.bytes(16)?;
                let minimum = soa.u32()?;
                ttl = Some(record_ttl.min(minimum));
            }
        }
    }
    addrs.sort();
    addrs.dedup();
    Ok(Answer {
        id,
        name,
        family,
        addrs,
        ttl: ttl.map(|t| Duration::from_secs(t.into())),
    })
}

// -------------------------------------------------------------------------------------------------
// The resolver: a state machine over sent queries and fed answers
// -------------------------------------------------------------------------------------------------

/// Bounds on how long answers are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Answers are kept at least this long, so a TTL of 0 does not become a query storm.
    pub min_ttl: Duration,
    /// And at most this long, so a changed address is picked up within a day.
    pub max_ttl: Duration,
    /// An empty answer without an SOA is asked again after this long.
    pub negative_ttl: Duration,
    /// After every nameserver failed every attempt, the name is asked again after this long;
    /// the addresses known so far are kept meanwhile.
    pub retry_after: Duration,
}

impl Default for CachePolicy {
    fn default() -> CachePolicy {
        CachePolicy {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(86_400),
            negative_ttl: Duration::from_secs(60),
            retry_after: Duration::from_secs(30),
        }
    }
}

/// A query datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub server: SocketAddr,
    pub datagram: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Outstanding {
    id: u16,
    server: usize,
    /// Sends so far (over all servers).
    sent: u32,
    deadline: Instant,
}

#[derive(Debug, Clone, Default)]
struct RecordSet {
    addrs: Vec<IpAddr>,
    /// When the set must be asked for again; `None`: now.
    refresh_at: Option<Instant>,
    outstanding: Option<Outstanding>,
}

/// Keeps a set of host names resolved: hosts file first, then DNS, refreshed as TTLs run out.
///
/// Drive it with [`Resolver::poll`] (datagrams to send now), [`Resolver::feed`] (a datagram
/// that arrived) and [`Resolver::next_deadline`] (when to poll again); it never blocks and
/// owns no socket. Answers are only accepted from the server asked, with the query's id and
/// question; ids come from the kernel's random source.
#[derive(Debug, Clone)]
pub struct Resolver {
    hosts: HostsFile,
    conf: ResolvConf,
    policy: CachePolicy,
    names: BTreeMap<(String, Family), RecordSet>,
}

impl Resolver {
    pub fn new(hosts: HostsFile, conf: ResolvConf, policy: CachePolicy) -> Resolver {
        Resolver {
            hosts,
            conf,
            policy,
            names: BTreeMap::new(),
        }
    }

    /// From the system files (or test fixtures in their format).
    pub fn from_files(hosts: &Path, resolv_conf: &Path) -> std::io::Result<Resolver> {
        Ok(Resolver::new(
            HostsFile::load(hosts)?,
            ResolvConf::load(resolv_conf)?,
            CachePolicy::default(),
        ))
    }

    /// Starts keeping `name` resolved (a no-op for names in the hosts file).
    pub fn watch(&mut self, name: &str) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.hosts.lookup(&name).is_some() {
            return;
        }
        for family in [Family::V4, Family::V6] {
            self.names.entry((name.clone(), family)).or_default();
        }
    }

    /// Stops keeping names resolved that are not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<String>) {
        self.names.retain(|(name, _), _| keep.contains(name));
    }

    /// The addresses `name` has now: hosts file entries, else the last DNS answers.
    pub fn addresses(&self, name: &str) -> Vec<IpAddr> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(addrs) = self.hosts.lookup(&name) {
            return addrs.to_vec();
        }
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            if let Some(set) = self.names.get(&(name.clone(), family)) {
                out.extend_from_slice(&set.addrs);
            }
        }
        out
    }

    /// Whether no query is outstanding and every watched name has had an answer (or gave up).
    pub fn settled(&self) -> bool {
        self.names
            .values()
            .all(|s| s.refresh_at.is_some() && s.outstanding.is_none())
    }

    /// The queries due at `now`: names never asked or whose answers expired, and retries of
    /// queries that timed out (next nameserver, up to `attempts` rounds over all of them).
    pub fn poll(&mut self, now: Instant) -> Vec<Query> {
        let servers = self.conf.nameservers.clone();
        let mut out = Vec::new();
        for ((name, family), set) in &mut self.names {
            if servers.is_empty() {
                // Nothing to ask: the name has no addresses until the configuration changes.
                if set.refresh_at.is_none() {
                    set.refresh_at = Some(now + self.policy.retry_after);
                }
                continue;
            }
            let next = match &set.outstanding {
                Some(o) if now < o.deadline => continue,
                Some(o) => {
                    let limit = self.conf.attempts * servers.len() as u32;
                    if o.sent >= limit {
                        set.outstanding = None;
                        set.refresh_at = Some(now + self.policy.retry_after);
                        continue;
                    }
                    (o.server + 1, o.sent)
                }
                None if set.refresh_at.is_some_and(|t| now < t) => continue,
                None => (0, 0),
            };
            let (server, sent) = (next.0 % servers.len(), next.1);
            let id = random_id();
            out.push(Query {
                server: servers[server],
                datagram: encode_query(id, name, *family),
            });
            set.outstanding = Some(Outstanding {
                id,
                server,
                sent: sent + 1,
                deadline: now + self.conf.timeout,
            });
        }
        out
    }

    /// Takes an answer datagram from `from`. Returns whether any name's addresses changed.
    /// Datagrams that answer nothing outstanding are dropped (stale, spoofed or duplicate).
    pub fn feed(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> bool {
        let Ok(answer) = decode_answer(datagram) else {
            return false;
        };
        let Some(set) = self.names.get_mut(&(answer.name.clone(), answer.family)) else {
            return false;
        };
        let Some(o) = &set.outstanding else {
            return false;
        };
        if o.id != answer.id || self.conf.nameservers.get(o.server) != Some(&from) {
            return false;
        }
        set.outstanding = None;
        let keep = match answer.ttl {
            Some(ttl) => ttl.clamp(self.policy.min_ttl, self.policy.max_ttl),
            None => self.policy.negative_ttl,
        };
        set.refresh_at = Some(now + keep);
        let changed = set.addrs != answer.addrs;
        set.addrs = answer.addrs;
        changed
    }

    /// When [`Resolver::poll`] next has work: a timeout or a TTL running out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.names
            .values()
            .map(|s| match &s.outstanding {
                Some(o) => Some(o.deadline),
                None => s.refresh_at,
            })
            .min()
            .map(|t| t.unwrap_or_else(Instant::now))
    }

    /// Resolves the watched names with a socket of its own, waiting at most `limit`: for
    /// programs without an event loop (the gateway at start, the CLI). The daemon drives
    /// poll/feed from its loop instead.
    pub fn settle_blocking(&mut self, limit: Duration) -> std::io::Result<()> {
        let end = Instant::now() + limit;
        let mut sockets: HashMap<bool, UdpSocket> = HashMap::new();
        loop {
            let now = Instant::now();
            for q in self.poll(now) {
                let v6 = q.server.is_ipv6();
                let socket = match sockets.entry(v6) {
                    std::collections::hash_map::Entry::Occupied(s) => s.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let bind: SocketAddr = if v6 {
                            (Ipv6Addr::UNSPECIFIED, 0).into()
                        } else {
                            (Ipv4Addr::UNSPECIFIED, 0).into()
                        };
                        v.insert(UdpSocket::bind(bind)?)
                    }
                };
                // A send that fails (no route) counts as a timed-out attempt.
                let _ = socket.send_to(&q.datagram, q.server);
            }
            if self.settled() || now >= end {
                return Ok(());
            }
            let wait = self
                .next_deadline()
                .unwrap_or(end)
                .min(end)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1))
                .min(Duration::from_millis(50));
            let mut buf = [0u8; 1500];
            let mut got = false;
            for socket in sockets.values() {
                socket.set_read_timeout(Some(wait / sockets.len().max(1) as u32))?;
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    self.feed(from, &buf[..n], Instant::now());
                    got = true;
                }
            }
            if !got && sockets.is_empty() {
                std::thread::sleep(wait);
            }
        }
    }
}

fn random_id() -> u16 {
    let mut id = [0u8; 2];
    // SAFETY: `id` is valid for writing two bytes.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != 2 {
        // getrandom(2) cannot fail for two bytes after boot; a clock-derived id is the fallback.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return (nanos ^ (nanos >> 16)) as u16;
    }
    u16::from_ne_bytes(id)
}

// -------------------------------------------------------------------------------------------------
// Address book: socket address → provider
// -------------------------------------------------------------------------------------------------

/// Which provider a destination belongs to. Rebuilt whenever the resolver reports a change;
/// [`AddressBook::entries`] is what the kernel tier loads into its map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressBook {
    by_addr: HashMap<SockAddr, String>,
}

impl AddressBook {
    pub fn build(providers: &Providers, resolver: &Resolver) -> AddressBook {
        let mut by_addr = HashMap::new();
        for p in providers.iter() {
            for e in &p.endpoints {
                let addrs: Vec<SockAddr> = match e {
                    Endpoint::Addr(a) => vec![SockAddr::from(*a)],
                    Endpoint::Unix(path) => vec![SockAddr::Unix {
                        path: path.to_string_lossy().into_owned(),
                    }],
                    Endpoint::Host { host, port } => resolver
                        .addresses(host)
                        .into_iter()
                        .map(|ip| SockAddr::from(SocketAddr::new(ip, *port)))
                        .collect(),
                };
                for a in addrs {
                    // Two names resolving to one address: the first declared provider keeps it.
                    by_addr.entry(a).or_insert_with(|| p.name.clone());
                }
            }
        }
        AddressBook { by_addr }
    }

    /// The provider a connect to `addr` reaches. IPv4-mapped IPv6 addresses match their IPv4
    /// entry, so a dual-stack socket cannot slip past.
    pub fn provider_of(&self, addr: &SockAddr) -> Option<&str> {
        if let Some(name) = self.by_addr.get(addr) {
            return Some(name);
        }
        if let SockAddr::Inet6 { addr, port } = addr
            && let Some(v4) = addr.to_ipv4_mapped()
        {
            return self
                .by_addr
                .get(&SockAddr::Inet {
                    addr: v4,
                    port: *port,
                })
                .map(String::as_str);
        }
        None
    }

    /// Every (address, provider) pair, sorted for stable output.
    pub fn entries(&self) -> Vec<(&SockAddr, &str)> {
        let mut v: Vec<_> = self.by_addr.iter().map(|(a, p)| (a, p.as_str())).collect();
        v.sort_by_key(|(a, p)| (format!("{a:?}"), *p));
        v
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(yaml: &str) -> Vec<ProviderSpec> {
        serde_norway::from_str(yaml).unwrap()
    }

    const TWO: &str = r#"
- name: openai
  kind: cloud
  api: openai
  endpoints: ["api.openai.test:443"]
- name: ollama
  kind: local
  api: ollama
  endpoints: ["127.0.0.1:11434", "unix:/run/ollama.sock", "[::1]:11434"]
"#;

    #[test]
    fn specs_parse_and_validate() {
        let p = Providers::from_specs(&specs(TWO)).unwrap();
        let openai = p.get("openai").unwrap();
        assert!(openai.tls);
        assert_eq!(
            openai.endpoints,
            [Endpoint::Host {
                host: "api.openai.test".into(),
                port: 443
            }]
        );
        let ollama = p.get("ollama").unwrap();
        assert!(!ollama.tls);
        assert_eq!(ollama.endpoints.len(), 3);
        assert_eq!(
            p.host_names().into_iter().collect::<Vec<_>>(),
            ["api.openai.test"]
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let bad = "- name: x\n  kind: cloud\n  api: openai\n  endpoints: [a.b:1]\n  tsl: true\n";
        assert!(serde_norway::from_str::<Vec<ProviderSpec>>(bad).is_err());
        let bad = "- name: x\n  kind: remote\n  api: openai\n  endpoints: [a.b:1]\n";
        assert!(serde_norway::from_str::<Vec<ProviderSpec>>(bad).is_err());
    }

    #[test]
    fn validation_names_the_entry_and_the_reason() {
        let err = |yaml: &str| Providers::from_specs(&specs(yaml)).unwrap_err().to_string();
        let e = err("- {name: OpenAI, kind: cloud, api: openai, endpoints: [a.b:443]}");
        assert!(e.starts_with("providers[0]: name \"OpenAI\""), "{e}");
        let e = err("- {name: a, kind: cloud, api: openai, endpoints: []}");
        assert!(e.contains("at least one endpoint"), "{e}");
        let e = err("- {name: a, kind: cloud, api: openai, endpoints: [api.openai.com]}");
        assert!(e.contains("port is required"), "{e}");
        let e = err("- {name: a, kind: cloud, api: openai, endpoints: [\"api.x.com:0\"]}");
        assert!(e.contains("not a port"), "{e}");
        let e = err("- {name: a, kind: cloud, api: openai, endpoints: [\"unix:/x.sock\"]}");
        assert!(e.contains("not a unix socket"), "{e}");
        let e = err("- {name: a, kind: local, api: ollama, endpoints: [\"gpu-box:11434\"]}");
        assert!(e.contains("address:port"), "{e}");
        let e = err("- {name: a, kind: cloud, api: openai, endpoints: [\"bad_host!:443\"]}");
        assert!(e.contains("not a valid host name"), "{e}");
        let e = err(
            "- {name: a, kind: cloud, api: openai, endpoints: [\"x.y:443\"]}\n\
             - {name: a, kind: cloud, api: openai, endpoints: [\"z.y:443\"]}",
        );
        assert!(e.contains("declared twice"), "{e}");
        let e = err(
            "- {name: a, kind: local, api: openai, endpoints: [\"127.0.0.1:80\"]}\n\
             - {name: b, kind: local, api: openai, endpoints: [\"127.0.0.1:80\"]}",
        );
        assert!(e.contains("already an endpoint of provider a"), "{e}");
        let e = err("- {name: local, kind: local, api: ollama, endpoints: [\"127.0.0.1:1\"]}");
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn hosts_file_fixture() {
        let hosts = HostsFile::parse(
            "# comment\n127.0.0.1 localhost\n\n10.0.0.5  API.OpenAI.test  openai-alias # c\n\
             fd00::5 api.openai.test\nnot-an-ip name\n10.0.0.6 api.openai.test.\n",
        );
        assert_eq!(
            hosts.lookup("api.openai.test").unwrap(),
            [
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap(),
                "10.0.0.6".parse().unwrap()
            ]
        );
        assert_eq!(hosts.lookup("Openai-Alias.").unwrap().len(), 1);
        assert!(hosts.lookup("name").is_none());
    }

    #[test]
    fn resolv_conf_fixture() {
        let c = ResolvConf::parse(
            "search example.com\nnameserver 127.0.0.53\nnameserver ::1 # v6\nnameserver fe80::1%eth0\n\
             nameserver 9.9.9.9\noptions ndots:2 timeout:1 attempts:9\n",
        );
        assert_eq!(c.nameservers.len(), 3);
        assert_eq!(c.nameservers[0], "127.0.0.53:53".parse().unwrap());
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.attempts, 5);
    }

    /// A response the way a recursive server writes it: the question, a CNAME, then A records.
    fn response(id: u16, name: &str, family: Family, ttl: u32, addrs: &[IpAddr]) -> Vec<u8> {
        let mut m = encode_query(id, name, family);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 1 + addrs.len() as u8; // ancount
        // name CNAME edge.name (pointer to the question name at offset 12)
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        let target_pos = m.len() + 2;
        let target = b"\x04edge\xC0\x0C";
        m.extend_from_slice(&(target.len() as u16).to_be_bytes());
        m.extend_from_slice(target);
        for a in addrs {
            m.extend_from_slice(&[0xC0, target_pos as u8]);
            let (t, data) = match a {
                IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
                IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
            };
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1]);
            m.extend_from_slice(&(ttl + 100).to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(&data);
        }
        m
    }

    #[test]
    fn answers_follow_cnames_and_take_the_smallest_ttl() {
        let addrs: Vec<IpAddr> = vec!["192.0.2.2".parse().unwrap(), "192.0.2.1".parse().unwrap()];
        let a = decode_answer(&response(7, "api.openai.test", Family::V4, 60, &addrs)).unwrap();
        assert_eq!(a.id, 7);
        assert_eq!(a.name, "api.openai.test");
        assert_eq!(
            a.addrs,
            [
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "192.0.2.2".parse().unwrap()
            ]
        );
        assert_eq!(a.ttl, Some(Duration::from_secs(60)));
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let good = response(7, "a.test", Family::V4, 60, &["192.0.2.1".parse().unwrap()]);
        for cut in 0..good.len() {
            let _ = decode_answer(&good[..cut]);
        }
        let mut looped = good.clone();
        // A compression pointer to itself must not loop forever.
        looped[12] = 0xC0;
        looped[13] = 12;
        assert!(decode_answer(&looped).is_err());
        let query = encode_query(1, "a.test", Family::V4);
        assert_eq!(decode_answer(&query), Err(DnsError::NotAResponse));
    }

    fn resolver_with(servers: &[SocketAddr]) -> Resolver {
        Resolver::new(
            HostsFile::parse("127.0.0.1 fixed.test\n"),
            ResolvConf {
                nameservers: servers.to_vec(),
                timeout: Duration::from_secs(1),
                attempts: 2,
            },
            CachePolicy::default(),
        )
    }

    #[test]
    fn state_machine_retries_rotates_and_honours_ttls() {
        let ns1: SocketAddr = "192.0.2.53:53".parse().unwrap();
        let ns2: SocketAddr = "192.0.2.54:53".parse().unwrap();
        let mut r = resolver_with(&[ns1, ns2]);
        r.watch("fixed.test");
        r.watch("api.openai.test");
        let t0 = Instant::now();
        let qs = r.poll(t0);
        assert_eq!(
            qs.len(),
            2,
            "A and AAAA for the one name not in the hosts file"
        );
        assert!(qs.iter().all(|q| q.server == ns1));
        assert!(r.poll(t0).is_empty(), "nothing more until the timeout");
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(1)));
        // Timeout: the next server is asked.
        let t1 = t0 + Duration::from_secs(1);
        let qs = r.poll(t1);
        assert!(qs.iter().all(|q| q.server == ns2));
        let v4 = qs
            .iter()
            .find(|q| q.datagram.ends_with(&[0, 1, 0, 1]))
            .unwrap();
        let id = u16::from_be_bytes([v4.datagram[0], v4.datagram[1]]);
        let addr: IpAddr = "192.0.2.10".parse().unwrap();
        // Wrong id and wrong server are ignored; the right answer changes the set.
        assert!(!r.feed(
            ns2,
            &response(id ^ 1, "api.openai.test", Family::V4, 120, &[addr]),
            t1
        ));
        assert!(!r.feed(
            ns1,
            &response(id, "api.openai.test", Family::V4, 120, &[addr]),
            t1
        ));
        assert!(r.feed(
            ns2,
            &response(id, "api.openai.test", Family::V4, 120, &[addr]),
            t1
        ));
        assert_eq!(r.addresses("api.openai.test"), [addr]);
        assert_eq!(
            r.addresses("FIXED.test"),
            ["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        // The AAAA query runs out of attempts (2 rounds × 2 servers) and is retried later;
        // the A answer is refreshed when its TTL runs out.
        let mut t = t1;
        for _ in 0..2 {
            t += Duration::from_secs(1);
            assert_eq!(r.poll(t).len(), 1);
        }
        t += Duration::from_secs(1);
        assert!(r.poll(t).is_empty(), "attempts exhausted");
        assert!(r.settled());
        let refresh = t1 + Duration::from_secs(120);
        assert!(r.next_deadline().unwrap() <= refresh);
        let qs = r.poll(refresh);
        assert_eq!(qs.len(), 2, "A refresh and AAAA retry");
        assert_eq!(
            r.addresses("api.openai.test"),
            [addr],
            "kept while refreshing"
        );
    }

    #[test]
    fn address_book_maps_addresses_to_providers() {
        let providers = Providers::from_specs(&specs(TWO)).unwrap();
        let resolver = Resolver::new(
            HostsFile::parse("10.0.0.5 api.openai.test\nfd00::5 api.openai.test\n"),
            ResolvConf::default(),
            CachePolicy::default(),
        );
        let book = AddressBook::build(&providers, &resolver);
        let v4 = SockAddr::Inet {
            addr: "10.0.0.5".parse().unwrap(),
            port: 443,
        };
        assert_eq!(book.provider_of(&v4), Some("openai"));
        let mapped = SockAddr::Inet6 {
            addr: "::ffff:10.0.0.5".parse().unwrap(),
            port: 443,
        };
        assert_eq!(book.provider_of(&mapped), Some("openai"));
        let v6 = SockAddr::Inet6 {
            addr: "fd00::5".parse().unwrap(),
            port: 443,
        };
        assert_eq!(book.provider_of(&v6), Some("openai"));
        let other_port = SockAddr::Inet {
            addr: "10.0.0.5".parse().unwrap(),
            port: 80,
        };
        assert_eq!(book.provider_of(&other_port), None);
        let unix = SockAddr::Unix {
            path: "/run/ollama.sock".into(),
        };
        assert_eq!(book.provider_of(&unix), Some("ollama"));
        assert_eq!(book.len(), 5);
    }

    /// A fake nameserver on 127.0.0.1 answers over real UDP; the address set follows a changed
    /// answer once the TTL runs out.
    #[test]
    fn resolves_through_a_fake_dns_server_and_follows_changes() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server_addr = server.local_addr().unwrap();
        let answers = std::sync::Arc::new(std::sync::Mutex::new(vec![
            "192.0.2.1".parse::<IpAddr>().unwrap(),
        ]));
        let served = std::sync::Arc::clone(&answers);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_server = std::sync::Arc::clone(&stop);
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop_server.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    continue;
                };
                let q = &buf[..n];
                let id = u16::from_be_bytes([q[0], q[1]]);
                let aaaa = q.ends_with(&[0, 28, 0, 1]);
                let name = "api.openai.test";
                let reply = if aaaa {
                    response(id, name, Family::V6, 1, &[])
                } else {
                    response(id, name, Family::V4, 1, &served.lock().unwrap())
                };
                server.send_to(&reply, from).unwrap();
            }
        });
        let mut r = Resolver::new(
            HostsFile::default(),
            ResolvConf {
                nameservers: vec![server_addr],
                timeout: Duration::from_millis(500),
                attempts: 2,
            },
            CachePolicy {
                min_ttl: Duration::from_millis(100),
                ..CachePolicy::default()
            },
        );
        r.watch("api.openai.test");
        r.settle_blocking(Duration::from_secs(5)).unwrap();
        assert_eq!(
            r.addresses("api.openai.test"),
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        *answers.lock().unwrap() = vec!["192.0.2.7".parse().unwrap()];
        std::thread::sleep(Duration::from_millis(1100));
        r.settle_blocking(Duration::from_secs(5)).unwrap();
        assert_eq!(
            r.addresses("api.openai.test"),
            ["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        thread.join().unwrap();
    }
}
