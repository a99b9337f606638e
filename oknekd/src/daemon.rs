//! The one loop: one thread, one `mio::Poll`, every event source a small handler.
//!
//! Sources: signalfd (SIGHUP reload, SIGTERM/SIGINT stop), an inotify watch on the rules
//! directory (debounced hot reload), a 1 s timerfd (evidence flush, watchdog, housekeeping), the
//! control socket, the hook socket and its connections, and the enforcement tiers' fds. A
//! failure in one source is logged and that source alone is dropped; the others keep serving.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use oknek_event::{Action, Kind, Mechanism};
use oknek_protocol::{self as proto, MAX_FRAME};

use crate::config::{Config, ConfigError};
use crate::control::{self, Request, Response};
use crate::hook::{self, ConnLimits, HookConn, HookListener};
use crate::judge::{Judge, JudgeError};
use crate::sys::{DirWatch, SignalFd, Ticker};
use crate::tiers::ebpf::EbpfTier;
use crate::tiers::fanotify::{self, FanotifyTier};
use crate::tiers::seccomp::{self, Answer, SeccompListener};
use crate::{config, debug, error, info, kernel, notice, plan, procinfo, warn};

const SIGNALS: Token = Token(0);
const RULES_WATCH: Token = Token(1);
const TICK: Token = Token(2);
const CONTROL: Token = Token(3);
const HOOK: Token = Token(4);
const FANOTIFY: Token = Token(5);
const EBPF: Token = Token(6);
const RESOLVER: Token = Token(7);
const WEIGHTS: Token = Token(8);
/// Tokens from here on are connections and tiers, allocated as they come.
const FIRST_DYNAMIC: usize = 16;

/// Rules files are often written in several steps; wait this long after the last change.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Judge(#[from] JudgeError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Command-line overrides of the config's paths.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub rules_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    pub bpf_pin_dir: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(d) = &self.rules_dir {
            config.paths.rules_dir = d.clone();
        }
        if let Some(d) = &self.state_dir {
            config.paths.state_dir = d.clone();
        }
        if let Some(d) = &self.runtime_dir {
            config.paths.runtime_dir = d.clone();
        }
        if let Some(d) = &self.bpf_pin_dir {
            config.paths.bpf_pin_dir = d.clone();
        }
    }
}

enum Dynamic {
    Control { stream: UnixStream, buf: Vec<u8> },
    Hook(HookConn),
}

impl AsRawFd for Dynamic {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Dynamic::Control { stream, .. } => stream.as_raw_fd(),
            Dynamic::Hook(conn) => conn.as_raw_fd(),
        }
    }
}

pub struct Daemon {
    poll: Poll,
    config: Config,
    config_path: PathBuf,
    overrides: Overrides,
    judge: Judge,
    signals: SignalFd,
    rules_watch: Option<DirWatch>,
    ticker: Ticker,
    control: UnixListener,
    hook: HookListener,
    dynamic: HashMap<Token, Dynamic>,
    limits: ConnLimits,
    next_token: usize,
    reload_due: Option<Instant>,
    stopping: bool,
    watchdog: Option<Duration>,
    last_watchdog: Instant,
    frame_errors: u64,
    /// One listener per `oknek run` tree.
    seccomp: HashMap<Token, SeccompListener>,
    /// The uid that registered each listener, for `listener_limits`.
    seccomp_uid: HashMap<Token, u32>,
    listener_limits: ConnLimits,
    fanotify: Option<FanotifyTier>,
    /// The eBPF probes, when the config and the kernel allow them.
    ebpf: Option<EbpfTier>,
    /// What the kernel accepted when the daemon probed it at start.
    bpf_support: Option<oknek_bpf::Support>,
    /// What the current rules let userspace tiers enforce in the kernel, and how.
    plan: plan::TierPlan,
}

impl Daemon {
    /// Sets everything up: runtime dir, sockets, rules, evidence store, tiers. Nothing is
    /// announced as ready until all of it is armed.
    pub fn start(
        config: Config,
        config_path: PathBuf,
        overrides: Overrides,
    ) -> Result<Daemon, DaemonError> {
        // Before any thread exists (the evidence store starts one): threads inherit the mask, and
        // a thread that does not block these would take their default action, killing the
        // daemon on SIGTERM or SIGHUP instead of stopping cleanly or reloading.
        let signals = SignalFd::new(&[libc::SIGHUP, libc::SIGTERM, libc::SIGINT])
            .map_err(io_err("signalfd"))?;
        let runtime = config.paths.runtime_dir.clone();
        make_private_dir(&runtime, 0o755)
            .map_err(io_err(format!("runtime dir {}", runtime.display())))?;
        let judge = Judge::new(&config)?;
        let poll = Poll::new().map_err(io_err("epoll"))?;
        // SAFETY: ignoring SIGPIPE has no memory effects; writes to closed sockets then return EPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let ticker = Ticker::new(Duration::from_secs(1)).map_err(io_err("timerfd"))?;
        let control_path = runtime.join("control.sock");
        let _ = std::fs::remove_file(&control_path);
        let control = UnixListener::bind(&control_path)
            .map_err(io_err(format!("control socket {}", control_path.display())))?;
        control
            .set_nonblocking(true)
            .map_err(io_err("control socket"))?;
        restrict_control_socket(&control_path, config.control_gid)
            .map_err(io_err(format!("control socket {}", control_path.display())))?;
        let hook_path = runtime.join("oknek.sock");
        let hook = HookListener::bind(&hook_path)
            .map_err(io_err(format!("hook socket {}", hook_path.display())))?;
        let rules_watch = match DirWatch::new(&config.paths.rules_dir) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(
                    "oknekd: cannot watch {} for changes ({e}); reload with SIGHUP or `oknek reload`",
                    config.paths.rules_dir.display()
                );
                None
            }
        };
        let registry = poll.registry();
        let reg = |fd: RawFd, token| {
            registry
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
                .map_err(io_err("epoll registration"))
        };
        reg(signals.as_raw_fd(), SIGNALS)?;
        reg(ticker.as_raw_fd(), TICK)?;
        reg(control.as_raw_fd(), CONTROL)?;
        reg(hook.as_raw_fd(), HOOK)?;
        if let Some(w) = &rules_watch {
            reg(w.as_raw_fd(), RULES_WATCH)?;
        }
        // Ping at twice the rate systemd expects.
        let watchdog = sd_notify::watchdog_enabled().map(|period| period / 2);
        Ok(Daemon {
            poll,
            config,
            config_path,
            overrides,
            judge,
            signals,
            rules_watch,
            ticker,
            control,
            hook,
            dynamic: HashMap::new(),
            limits: ConnLimits::default(),
            next_token: FIRST_DYNAMIC,
            reload_due: None,
            stopping: false,
            watchdog,
            last_watchdog: Instant::now(),
            frame_errors: 0,
            seccomp: HashMap::new(),
            seccomp_uid: HashMap::new(),
            listener_limits: ConnLimits::listeners(),
            fanotify: None,
            ebpf: None,
            bpf_support: None,
            plan: plan::TierPlan::default(),
        })
        .and_then(|mut daemon| {
            daemon.start_resolver();
            let waker = std::sync::Arc::new(
                mio::Waker::new(daemon.poll.registry(), WEIGHTS).map_err(io_err("eventfd"))?,
            );
            daemon.judge.weights = Some(crate::weights::WeightsHasher::start(std::sync::Arc::new(
                move || {
                    let _ = waker.wake();
                },
            )));
            daemon.start_ebpf()?;
            daemon.start_fanotify()?;
            daemon.arm_tiers();
            daemon.track_running_agents();
            Ok(daemon)
        })
    }

    /// Loads (or adopts, after a restart) the eBPF probes when the config and the kernel allow
    /// them. `tiers.ebpf: on` makes a failure fatal; `auto` logs it and goes on without.
    fn start_ebpf(&mut self) -> Result<(), DaemonError> {
        let switch = self.config.tiers.ebpf;
        if switch == config::TierSwitch::Off {
            return Ok(());
        }
        let support = oknek_bpf::probe_support();
        let usable = support.lsm.available
            || (support.cgroup_sock_addr.available && support.cgroup2.is_some())
            || support.tracepoint.available;
        let result = if usable {
            EbpfTier::start(
                &self.config.paths.bpf_pin_dir,
                &self.config.paths.state_dir,
                &support,
            )
            .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "the kernel accepts no eBPF program oknek uses (lsm: {}; cgroup sock_addr: {}; tracepoint: {})",
                support.lsm.detail, support.cgroup_sock_addr.detail, support.tracepoint.detail
            ))
        };
        self.bpf_support = Some(support);
        match result {
            Ok(tier) => {
                self.poll
                    .registry()
                    .register(&mut SourceFd(&tier.ring_fd()), EBPF, Interest::READABLE)
                    .map_err(io_err("epoll registration"))?;
                notice!(
                    "oknekd: eBPF probes {} under {}",
                    match tier.start {
                        oknek_bpf::Start::Fresh => "loaded",
                        oknek_bpf::Start::Adopted => "adopted (they kept enforcing)",
                        oknek_bpf::Start::Upgraded => "upgraded without a gap",
                    },
                    self.config.paths.bpf_pin_dir.display()
                );
                self.ebpf = Some(tier);
                Ok(())
            }
            Err(e) if switch == config::TierSwitch::Auto => {
                warn!("oknekd: eBPF tier unavailable ({e}); the other tiers decide");
                Ok(())
            }
            Err(e) => Err(DaemonError::Io {
                what: "eBPF tier (tiers.ebpf: on)".into(),
                source: std::io::Error::other(e),
            }),
        }
    }

    /// Opens the sockets provider names are resolved through (none when every provider is
    /// declared by address) and sends the first queries.
    fn start_resolver(&mut self) {
        if let Err(e) = self.judge.models.register(self.poll.registry(), RESOLVER) {
            warn!(
                "oknekd: providers: cannot open a socket for name resolution ({e}); providers named by host match only /etc/hosts entries"
            );
        }
        self.judge.models.poll_resolver(Instant::now());
    }

    /// Loads the providers' current addresses and the connect-time model-call rules into the
    /// kernel.
    fn set_kernel_models(&mut self) {
        let Some(tier) = &mut self.ebpf else { return };
        let providers: Vec<(String, String)> = self
            .judge
            .models
            .providers()
            .iter()
            .map(|p| (p.name.clone(), p.api.name().to_owned()))
            .collect();
        let refs: Vec<oknek_engine::ProviderRef<'_>> = providers
            .iter()
            .map(|(name, api)| oknek_engine::ProviderRef { name, api })
            .collect();
        let plan = self.judge.rules().model_connect_plan(&refs);
        tier.coverage
            .retain(|c| !plan.iter().any(|r| r.id == c.rule));
        match tier.set_models(&self.judge.models, &plan) {
            Ok(metered) => {
                info!(
                    "oknekd: eBPF: {} provider addresses, {} model-call quotas metered in the kernel",
                    self.judge.models.book().len(),
                    metered.len()
                );
                self.judge.models.kernel_quotas = metered;
            }
            Err(e) => error!("oknekd: eBPF: loading model providers failed: {e}"),
        }
    }

    /// Marks the agent processes already running in the kernel's agent map (the kernel only
    /// sees new agents at exec and fork).
    fn track_running_agents(&mut self) {
        let Some(tier) = &mut self.ebpf else { return };
        let mut tracked = 0usize;
        for tgid in procinfo::all_pids() {
            if tgid == std::process::id() {
                continue;
            }
            if let Some(agent) = self.judge.agents.agent_of(tgid) {
                match tier.track(tgid, &agent) {
                    Ok(()) => tracked += 1,
                    Err(e) => warn!("oknekd: eBPF: tracking pid {tgid}: {e}"),
                }
            }
        }
        if tracked > 0 {
            info!("oknekd: eBPF: {tracked} running agent processes tracked");
        }
    }

    /// Opens the fanotify group when the config and the kernel allow it. `tiers.fanotify: on`
    /// makes a failure fatal; `auto` logs it and goes on without the tier.
    fn start_fanotify(&mut self) -> Result<(), DaemonError> {
        let switch = self.config.tiers.fanotify;
        if switch == config::TierSwitch::Off {
            return Ok(());
        }
        if switch == config::TierSwitch::Auto
            && let Some(tier) = &self.ebpf
            && tier.enforcer(Kind::Open) == Some(Mechanism::BpfLsm)
            && tier.enforcer(Kind::Exec) == Some(Mechanism::BpfLsm)
        {
            info!("oknekd: fanotify not armed: BPF LSM refuses open and exec in the kernel");
            return Ok(());
        }
        raise_fd_limit();
        let opts = fanotify::TierOptions {
            fail_mode: match self.config.fail_mode {
                config::FailMode::Open => fanotify::FailMode::Open,
                config::FailMode::Closed => fanotify::FailMode::Closed,
            },
            ..fanotify::TierOptions::default()
        };
        match FanotifyTier::new(opts) {
            Ok(tier) => {
                self.poll
                    .registry()
                    .register(
                        &mut SourceFd(&tier.as_raw_fd()),
                        FANOTIFY,
                        Interest::READABLE,
                    )
                    .map_err(io_err("epoll registration"))?;
                self.fanotify = Some(tier);
                Ok(())
            }
            Err(e) if switch == config::TierSwitch::Auto => {
                warn!("oknekd: fanotify tier unavailable ({e}); open and exec use the other tiers");
                Ok(())
            }
            Err(e) => Err(DaemonError::Io {
                what: "fanotify tier (tiers.fanotify: on)".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// (Re)computes what the tiers enforce from the current rules and applies it.
    fn arm_tiers(&mut self) {
        self.plan = plan::TierPlan::new(self.judge.rules(), &self.config);
        self.judge.never_open = self.plan.protected.keys().copied().collect();
        let runtime = self.config.paths.runtime_dir.clone();
        let seccomp_on = self.config.tiers.seccomp != config::TierSwitch::Off;
        if seccomp_on && let Err(e) = seccomp::write_landlock_policy(&runtime, &self.plan.landlock)
        {
            warn!("oknekd: publishing the Landlock policy for oknek run: {e}");
        }
        for listener in self.seccomp.values_mut() {
            listener.set_race_policy(self.plan.race_policy(listener.agent()));
        }
        if let Some(tier) = &mut self.fanotify {
            match tier.set_targets(&self.plan.fanotify) {
                Ok(report) => {
                    for t in report.targets.iter().filter(|t| !t.is_armed()) {
                        debug!(
                            "oknekd: fanotify: {} not marked: {:?}",
                            t.path.display(),
                            t.outcome
                        );
                    }
                    info!(
                        "oknekd: fanotify: {} objects marked for {} targets",
                        report.marks,
                        self.plan.fanotify.len()
                    );
                }
                Err(e) => error!("oknekd: fanotify: re-marking failed, previous marks stay: {e}"),
            }
        }
        self.judge.armed.insert("fanotify", self.fanotify.is_some());
        if let Some(tier) = &mut self.ebpf {
            let result = tier
                .set_agents(&self.config.agents)
                .and_then(|()| tier.set_rules(&self.judge.rules().kernel_plan()));
            match result {
                Ok(()) => {
                    let kernel = tier.coverage.iter().filter(|c| c.entries > 0).count();
                    info!(
                        "oknekd: eBPF: {kernel} block rules compiled into the kernel maps, {} rules decided in userspace",
                        tier.coverage.len() - kernel
                    );
                }
                Err(e) => error!("oknekd: eBPF: updating the kernel maps failed: {e}"),
            }
        }
        self.set_kernel_models();
        self.judge.armed.insert("ebpf", self.ebpf.is_some());
        let preload_on = self.publish_preload_table();
        self.judge.armed.insert("preload", preload_on);
        self.judge.armed.insert(
            "seccomp",
            seccomp_on
                && std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
                    .is_ok_and(|a| a.contains("user_notif")),
        );
    }

    /// Publishes what the preload shim must ask about: the rules' objects and destinations,
    /// and every provider address (each connect to one is a model call). Returns whether the
    /// preload tier is on.
    fn publish_preload_table(&self) -> bool {
        if self.config.tiers.preload == config::TierSwitch::Off {
            return false;
        }
        // A new generation per publication; time-based so it also grows across restarts.
        let generation = oknek_event::Timestamp::now().as_nanos().max(1) as u64;
        let providers: Vec<std::net::SocketAddr> = self
            .judge
            .models
            .book()
            .entries()
            .into_iter()
            .filter_map(|(addr, _)| match addr {
                oknek_event::SockAddr::Inet { addr, port } => Some((*addr, *port).into()),
                oknek_event::SockAddr::Inet6 { addr, port } => Some((*addr, *port).into()),
                oknek_event::SockAddr::Unix { .. } => None,
            })
            .collect();
        let table = plan::preload_table(self.judge.rules(), &self.config, &providers, generation);
        let runtime = &self.config.paths.runtime_dir;
        if let Err(e) = table.publish(runtime) {
            warn!(
                "oknekd: publishing the preload hook table in {}: {e}",
                runtime.display()
            );
        }
        true
    }

    pub fn runtime_dir(&self) -> &Path {
        &self.config.paths.runtime_dir
    }

    /// Runs until SIGTERM/SIGINT. Returns after flushing evidence.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        let status = self.judge.status_line();
        notice!("oknekd: ready: {status}");
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
        let mut events = Events::with_capacity(256);
        while !self.stopping {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(io_err("epoll_wait")(e));
            }
            for event in events.iter() {
                self.dispatch(event.token());
            }
            self.after_events();
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.judge.shutdown();
        let _ = std::fs::remove_file(self.runtime_dir().join("control.sock"));
        let _ = std::fs::remove_file(self.runtime_dir().join("oknek.sock"));
        notice!("oknekd: stopped");
        Ok(())
    }

    fn next_timeout(&self) -> Duration {
        let mut timeout = Duration::from_secs(1);
        if let Some(due) = self.reload_due {
            timeout = timeout.min(due.saturating_duration_since(Instant::now()));
        }
        if let Some(flush) = self.judge.flush_in() {
            timeout = timeout.min(flush);
        }
        if let Some(due) = self.judge.models.next_deadline() {
            timeout = timeout.min(due.saturating_duration_since(Instant::now()));
        }
        timeout
    }

    fn dispatch(&mut self, token: Token) {
        match token {
            SIGNALS => self.on_signals(),
            RULES_WATCH => {
                if let Some(w) = &self.rules_watch {
                    match w.drain() {
                        Ok(true) => self.reload_due = Some(Instant::now() + RELOAD_DEBOUNCE),
                        Ok(false) => {}
                        Err(e) => warn!("oknekd: rules watch: {e}"),
                    }
                }
            }
            TICK => {
                self.ticker.drain();
                self.judge.periodic();
                if let Some(tier) = &mut self.ebpf {
                    let settled = tier.settled(Instant::now());
                    let added = tier.refresh_cgroup_agents(&self.config.agents);
                    if added > 0 {
                        info!("oknekd: eBPF: {added} processes of agent cgroups tracked");
                    }
                    tier.refill_quotas(Instant::now());
                    let lost = tier.take_lost();
                    if lost > 0 {
                        warn!("oknekd: eBPF: {lost} kernel events lost (ring buffer full)");
                        self.judge.record_gap(lost, "eBPF ring buffer full");
                    }
                    self.record_ebpf(settled);
                }
            }
            CONTROL => self.accept_control(),
            HOOK => self.accept_hooks(),
            FANOTIFY => self.serve_fanotify(),
            EBPF => self.serve_ebpf(),
            WEIGHTS => {
                let finished = self
                    .judge
                    .weights
                    .as_mut()
                    .map(|w| w.finished())
                    .unwrap_or_default();
                for hashed in &finished {
                    self.judge.record_weights_hash(hashed);
                }
            }
            RESOLVER => {
                if self.judge.models.on_readable(Instant::now()) {
                    info!(
                        "oknekd: providers: addresses changed ({} now)",
                        self.judge.models.book().len()
                    );
                    self.set_kernel_models();
                    self.publish_preload_table();
                }
            }
            other => self.on_dynamic(other),
        }
    }

    /// Work that is due whatever woke us: debounced reload, evidence flush, watchdog.
    fn after_events(&mut self) {
        self.judge.models.poll_resolver(Instant::now());
        if self.reload_due.is_some_and(|due| Instant::now() >= due) {
            self.reload_due = None;
            self.reload("rules directory changed");
        }
        self.judge.flush_if_due();
        if let Some(period) = self.watchdog
            && self.last_watchdog.elapsed() >= period
        {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_watchdog = Instant::now();
        }
    }

    fn on_signals(&mut self) {
        loop {
            match self.signals.read() {
                Ok(Some(libc::SIGHUP)) => {
                    self.reload("SIGHUP");
                }
                Ok(Some(sig)) => {
                    notice!("oknekd: signal {sig}: stopping");
                    self.stopping = true;
                }
                Ok(None) => return,
                Err(e) => {
                    error!("oknekd: signalfd: {e}");
                    return;
                }
            }
        }
    }

    /// Reloads config-independent rules; a broken set is logged and the old one stays.
    fn reload(&mut self, why: &str) -> Response {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        let result = match Config::load(&self.config_path, false) {
            Ok(mut config) => {
                self.overrides.apply(&mut config);
                let result = self.judge.reload(&config);
                if result.is_ok() {
                    self.config = config;
                    // The providers may have changed: new resolver sockets, new queries.
                    self.start_resolver();
                    self.arm_tiers();
                }
                result
            }
            Err(e) => Err(e.to_string()),
        };
        let response = match result {
            Ok(summary) => {
                notice!("oknekd: reloaded ({why}): {summary}");
                Response::ok(serde_json::json!({ "summary": summary }))
            }
            Err(errors) => {
                error!("oknekd: reload ({why}) rejected, previous rules stay active:\n{errors}");
                Response::err(format!(
                    "reload rejected, previous rules stay active:\n{errors}"
                ))
            }
        };
        if let Some(w) = &mut self.rules_watch
            && let Err(e) = w.rewatch(&self.config.paths.rules_dir)
        {
            warn!("oknekd: re-watching rules dir: {e}");
        }
        let status = self.judge.status_line();
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
        response
    }

    fn add_dynamic(&mut self, fd: RawFd, source: Dynamic) -> io::Result<()> {
        let token = Token(self.next_token);
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_DYNAMIC);
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE)?;
        self.dynamic.insert(token, source);
        Ok(())
    }

    fn remove_dynamic(&mut self, token: Token) {
        if let Some(listener) = self.seccomp.remove(&token) {
            if let Some(uid) = self.seccomp_uid.remove(&token) {
                self.listener_limits.release(uid);
            }
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&listener.as_raw_fd()));
            return;
        }
        if let Some(source) = self.dynamic.remove(&token) {
            if let Dynamic::Hook(conn) = &source {
                self.limits.release(conn.peer.uid);
            }
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&source.as_raw_fd()));
            // Fds an agent queued on its connection are released when it closes: not here.
            if let Dynamic::Hook(conn) = source {
                crate::closer::close_later(conn.into_fd());
            }
        }
    }

    fn accept_control(&mut self) {
        loop {
            match self.control.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(true);
                    let fd = stream.as_raw_fd();
                    if let Err(e) = self.add_dynamic(
                        fd,
                        Dynamic::Control {
                            stream,
                            buf: Vec::new(),
                        },
                    ) {
                        warn!("oknekd: control connection: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("oknekd: control accept: {e}");
                    return;
                }
            }
        }
    }

    fn accept_hooks(&mut self) {
        loop {
            match self.hook.accept() {
                Ok(Some(conn)) => {
                    if !self.limits.admit(conn.peer.uid) {
                        warn!(
                            "oknekd: hook socket: refusing connection from uid {} pid {} (connection limit)",
                            conn.peer.uid, conn.peer.pid
                        );
                        crate::closer::close_later(conn.into_fd());
                        continue;
                    }
                    let fd = conn.as_raw_fd();
                    let uid = conn.peer.uid;
                    if let Err(e) = self.add_dynamic(fd, Dynamic::Hook(conn)) {
                        self.limits.release(uid);
                        warn!("oknekd: hook connection: {e}");
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    warn!("oknekd: hook accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_dynamic(&mut self, token: Token) {
        let close = match self.dynamic.get_mut(&token) {
            Some(Dynamic::Control { .. }) => self.serve_control(token),
            Some(Dynamic::Hook(_)) => self.serve_hook(token),
            None if self.seccomp.contains_key(&token) => self.serve_seccomp(token),
            None => false,
        };
        if close {
            self.remove_dynamic(token);
        }
    }

    /// Serves one control request; returns true when the connection is done.
    fn serve_control(&mut self, token: Token) -> bool {
        let Some(Dynamic::Control { stream, buf }) = self.dynamic.get_mut(&token) else {
            return true;
        };
        let request = match control::authorised(stream, self.config.control_gid) {
            Err(refusal) => {
                warn!("oknekd: control socket: {refusal}");
                Err(refusal)
            }
            Ok(_) => match control::read_request(stream, buf) {
                Ok(None) => return false,
                Ok(Some(r)) => Ok(r),
                Err(e) => Err(e.to_string()),
            },
        };
        let response = match request {
            Ok(Request::Reload {}) => self.reload("oknek reload"),
            Ok(Request::Doctor {}) => {
                let mut facts = kernel::probe(&self.config.paths.runtime_dir);
                let ebpf = self.ebpf_view();
                if let Some(support) = &self.bpf_support {
                    facts.facilities.extend(kernel::bpf_facilities(support));
                }
                Response::ok(self.judge.doctor(&facts, ebpf.as_ref()))
            }
            Ok(Request::Status {}) => {
                let mut status = self.judge.status();
                if let Some(tier) = &self.ebpf {
                    status["ebpf"] = serde_json::json!({
                        "pin_dir": self.config.paths.bpf_pin_dir,
                        "start": format!("{:?}", tier.start).to_lowercase(),
                        "lost_events": tier.lost_total(),
                        "enforcing": Kind::ALL.iter().filter_map(|k| {
                            tier.enforcer(*k).map(|m| (k.name(), m.name()))
                        }).collect::<std::collections::BTreeMap<_, _>>(),
                    });
                }
                Response::ok(status)
            }
            Ok(other) => self.judge.control(other),
            Err(e) => Response::err(e),
        };
        if let Some(Dynamic::Control { stream, .. }) = self.dynamic.get_mut(&token)
            && let Err(e) = control::write_response(stream, &response)
        {
            warn!("oknekd: control reply: {e}");
        }
        true
    }

    /// Serves the pending frames of one hook connection; returns true when it closed.
    fn serve_hook(&mut self, token: Token) -> bool {
        let mut buf = [0u8; MAX_FRAME];
        for _ in 0..hook::FRAMES_PER_TURN {
            let Some(Dynamic::Hook(conn)) = self.dynamic.get(&token) else {
                return true;
            };
            let received = match conn.recv(&mut buf) {
                Ok(Some(r)) => r,
                Ok(None) => return false,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return true,
                Err(e) => {
                    self.frame_errors += 1;
                    warn!("oknekd: hook socket (pid {}): {e}; closing", conn.peer.pid);
                    return true;
                }
            };
            let frame = &buf[..received.len];
            let (header, request) = match proto::decode(frame) {
                Ok(decoded) => decoded,
                Err(e) => {
                    self.frame_errors += 1;
                    if self.frame_errors.is_power_of_two() {
                        warn!(
                            "oknekd: hook socket: dropped bad frame from pid {} uid {}: {e} ({} so far)",
                            received.cred.pid, received.cred.uid, self.frame_errors
                        );
                    }
                    continue;
                }
            };
            let errno = match request {
                proto::Request::RegisterSeccomp { agent } => self.register_seccomp(agent, received),
                _ => self
                    .judge
                    .on_hook_frame(&header, &request, &received, &self.plan),
            };
            if header.flags & proto::FLAG_WANT_VERDICT != 0
                || header.op == proto::Op::RegisterSeccomp
            {
                let reply = proto::Reply {
                    op: header.op as u16,
                    seq: header.seq,
                    errno,
                };
                if let Some(Dynamic::Hook(conn)) = self.dynamic.get(&token) {
                    // A client that stopped reading loses its reply; it never blocks us.
                    let _ = conn.send(&reply.encode());
                }
            }
        }
        // More frames may be queued: mio is edge-triggered, so come back after the others.
        let _ = self.poll.registry().reregister(
            &mut SourceFd(&self.dynamic.get(&token).map_or(-1, Dynamic::as_raw_fd)),
            token,
            Interest::READABLE,
        );
        false
    }
}

impl Daemon {
    /// `oknek run` hands over the seccomp listener of the tree it is about to launch. The
    /// sender (the `oknek run` supervisor, a subreaper) becomes the root of a launched agent
    /// tree, so the other tiers know its descendants too.
    fn register_seccomp(&mut self, agent: &[u8], mut received: hook::Received) -> i32 {
        let pid = received.cred.pid;
        let Ok(agent) = std::str::from_utf8(agent) else {
            return libc::EINVAL;
        };
        if !config::valid_agent_name(agent) {
            warn!("oknekd: oknek run from pid {pid}: invalid agent name {agent:?}");
            return libc::EINVAL;
        }
        if self.config.run_agents == config::RunAgents::Declared
            && !self.judge.agents.is_declared(agent)
        {
            warn!("oknekd: oknek run from pid {pid}: agent {agent:?} is not declared");
            return libc::EPERM;
        }
        if self.config.tiers.seccomp == config::TierSwitch::Off {
            return libc::EOPNOTSUPP;
        }
        // A process that is already an agent keeps its identity: launching under another name
        // would swap its rules (and escape an operator's block of its own agent).
        let current = self.judge.agents.agent_of(pid);
        let agent: &str = match &current {
            Some(current) if &**current != agent => {
                notice!(
                    "oknekd: oknek run from pid {pid}: already agent {current:?}; the tree runs as {current:?}, not {agent:?}"
                );
                current
            }
            _ => agent,
        };
        if received.fds.len() != 1 {
            return libc::EBADMSG;
        }
        let Some(fd) = received.fds.pop() else {
            return libc::EBADMSG;
        };
        if !hook::is_seccomp_listener(&fd) {
            crate::closer::close_later(fd);
            warn!("oknekd: oknek run from pid {pid}: the fd sent is not a seccomp listener");
            return libc::EINVAL;
        }
        let uid = received.cred.uid;
        let Ok(root) = crate::agents::ProcKey::of(pid) else {
            return libc::ESRCH;
        };
        if !self.listener_limits.admit(uid) {
            warn!("oknekd: oknek run from pid {pid}: uid {uid} has too many agent trees running");
            return libc::EAGAIN;
        }
        let mut listener = match SeccompListener::new(fd, agent.to_owned()) {
            Ok(l) => l,
            Err(e) => {
                self.listener_limits.release(uid);
                warn!("oknekd: oknek run from pid {pid}: {e}");
                return libc::EINVAL;
            }
        };
        listener.set_race_policy(self.plan.race_policy(agent));
        let token = Token(self.next_token);
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_DYNAMIC);
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            token,
            Interest::READABLE,
        ) {
            self.listener_limits.release(uid);
            warn!("oknekd: oknek run from pid {pid}: {e}");
            return libc::EIO;
        }
        self.seccomp.insert(token, listener);
        self.seccomp_uid.insert(token, uid);
        self.judge.agents.register_launch(root, agent);
        if let Some(tier) = &mut self.ebpf
            && let Err(e) = tier.track(pid, agent)
        {
            warn!("oknekd: eBPF: tracking oknek run tree of pid {pid}: {e}");
        }
        info!(
            "oknekd: oknek run: agent {agent:?} launched by pid {pid} (uid {})",
            received.cred.uid
        );
        0
    }

    /// What `oknek doctor` says of the eBPF tier.
    fn ebpf_view(&self) -> Option<crate::judge::EbpfView> {
        if self.config.tiers.ebpf == config::TierSwitch::Off {
            return Some(crate::judge::EbpfView::Off);
        }
        let support = self.bpf_support.as_ref()?;
        Some(match &self.ebpf {
            Some(tier) => crate::judge::EbpfView::Armed {
                enforcers: [
                    Kind::Exec,
                    Kind::Open,
                    Kind::Connect,
                    Kind::Send,
                    Kind::Watch,
                ]
                .into_iter()
                .filter_map(|k| tier.enforcer(k).map(|m| (k, m)))
                .collect(),
                lsm: support.lsm.detail.clone(),
                cgroup: support.cgroup_sock_addr.detail.clone(),
                userspace_rules: tier
                    .coverage
                    .iter()
                    .filter(|c| !c.userspace.is_empty())
                    .map(|c| (c.rule.clone(), c.userspace.join("; ")))
                    .collect(),
            },
            None => crate::judge::EbpfView::Unavailable {
                why: format!(
                    "lsm: {}; cgroup sock_addr: {}",
                    support.lsm.detail, support.cgroup_sock_addr.detail
                ),
            },
        })
    }

    /// Records what the probes reported: refusals the kernel already made, and observations
    /// judged now.
    fn serve_ebpf(&mut self) {
        let Some(tier) = &mut self.ebpf else { return };
        let reported = tier.drain(&mut self.judge.identities, Instant::now());
        self.record_ebpf(reported);
    }

    fn record_ebpf(&mut self, reported: Vec<crate::tiers::ebpf::Reported>) {
        let fanotify_armed = self.fanotify.is_some();
        for crate::tiers::ebpf::Reported {
            event,
            refused_by,
            quota,
        } in reported
        {
            if let Some(rule) = refused_by {
                self.judge.record_kernel_refusal(&event, &rule);
                continue;
            }
            // Opens and execs of objects fanotify protects are decided (and recorded) there.
            if fanotify_armed
                && let Action::Open { path, .. } | Action::Exec { path, .. } = &event.action
                && std::fs::metadata(path)
                    .is_ok_and(|md| self.plan.protected_path(md.dev(), md.ino()).is_some())
            {
                continue;
            }
            self.judge
                .decide_observed_metered(&event, quota.as_ref().map(|(r, n)| (r.as_str(), *n)));
        }
    }

    /// Answers the kernel's pending permission questions about protected objects.
    fn serve_fanotify(&mut self) {
        let Some(tier) = &mut self.fanotify else {
            return;
        };
        let judge = &mut self.judge;
        let plan = &self.plan;
        let result = tier.drain(|req: &fanotify::PermissionRequest<'_>| {
            let Some(pid) = req.tgid() else {
                return fanotify::Answer::Undecided;
            };
            // One read of /proc/PID/stat serves the agent lookup and the identity.
            let Ok(key) = crate::agents::ProcKey::of(pid) else {
                return fanotify::Answer::Allow;
            };
            let Some(agent) = judge.agents.agent_of_key(key) else {
                return fanotify::Answer::Allow;
            };
            let Ok(mut process) = judge.identities.get_started(pid, key.start_time) else {
                return fanotify::Answer::Undecided;
            };
            process.pid = req.tid;
            process.agent = Some(agent.to_string());
            // The rule protects the object, whatever name it was reached by.
            let path = plan
                .protected_path(req.object.dev, req.object.ino)
                .map(str::to_owned)
                .or_else(|| {
                    req.targets()
                        .first()
                        .map(|t| t.path.to_string_lossy().into_owned())
                })
                .filter(|_| !matches!(req.matched, fanotify::Matched::None))
                .unwrap_or_else(|| req.path.to_string_lossy().into_owned());
            let action = match req.access {
                fanotify::Access::Open => oknek_event::Action::Open {
                    path,
                    // Unknown flags are taken as a possible write.
                    flags: req.open_flags().unwrap_or(oknek_event::open_flags::O_RDWR),
                    mode: 0,
                },
                fanotify::Access::Exec => oknek_event::Action::Exec {
                    path,
                    argv: Vec::new(),
                },
            };
            let event = oknek_event::Event {
                time: oknek_event::Timestamp::now(),
                source: oknek_event::Mechanism::Fanotify,
                process,
                action,
            };
            match judge.decide(&event) {
                oknek_event::Verdict::Block => fanotify::Answer::Deny,
                _ => fanotify::Answer::Allow,
            }
        });
        if let Err(e) = result {
            error!(
                "oknekd: fanotify tier failed ({e}); dropping it: the kernel now allows what it held"
            );
            if let Some(tier) = self.fanotify.take() {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&tier.as_raw_fd()));
            }
            self.judge.armed.insert("fanotify", false);
        }
    }

    /// Answers the pending notifications of one `oknek run` tree; true when the tree is gone.
    fn serve_seccomp(&mut self, token: Token) -> bool {
        let Some(listener) = self.seccomp.get_mut(&token) else {
            return true;
        };
        let mut decide = SeccompJudge {
            judge: &mut self.judge,
            plan: &self.plan,
            fanotify: self.fanotify.as_ref(),
        };
        loop {
            match listener.drain_with(&mut decide) {
                Ok(stats) if stats.more => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(
                        "oknekd: seccomp listener of agent {}: {e}",
                        listener.agent()
                    );
                    return true;
                }
            }
        }
        listener.is_closed()
    }
}

/// The rule engine as the seccomp tier of `oknek run` asks it.
struct SeccompJudge<'a> {
    judge: &'a mut Judge,
    plan: &'a plan::TierPlan,
    fanotify: Option<&'a FanotifyTier>,
}

impl SeccompJudge<'_> {
    fn marked(&self, dev: u64, ino: u64) -> bool {
        self.fanotify
            .is_some_and(|t| t.is_marked(fanotify::ObjectId { dev, ino }))
    }
}

impl seccomp::Decider for SeccompJudge<'_> {
    fn decide(&mut self, req: &seccomp::SyscallRequest) -> Answer {
        let Some(mut event) = crate::judge::event_from_seccomp(req, &mut self.judge.identities)
        else {
            return Answer::Allow;
        };
        // Another name of a protected file is judged as the protected file. An allowed open
        // is performed by the daemon itself, which must never open a marked object: it
        // would wait for its own answer.
        let inode = match &req.kind {
            seccomp::RequestKind::Open { inode, .. } => *inode,
            _ => None,
        };
        if let (Some((dev, ino)), oknek_event::Action::Open { path, .. }) =
            (inode, &mut event.action)
        {
            if let Some(protected) = self.plan.protected_path(dev, ino) {
                *path = protected.to_owned();
            }
            if self.judge.decide(&event) == oknek_event::Verdict::Block {
                return Answer::DENY;
            }
            if self.marked(dev, ino) {
                self.judge.record_synthetic(
                    &event,
                    crate::judge::PROTECTED_OBJECT_RULE,
                    oknek_event::Verdict::Block,
                    "object is marked by a block rule's fanotify tier",
                );
                return Answer::DENY;
            }
            return Answer::Allow;
        }
        match self.judge.decide(&event) {
            oknek_event::Verdict::Block => Answer::DENY,
            _ => Answer::Allow,
        }
    }

    /// Plaintext providers only: a TLS provider's requests cannot be read on the wire.
    fn reads_models_sent_to(&mut self, peer: &oknek_event::SockAddr) -> bool {
        let models = &self.judge.models;
        models
            .book()
            .provider_of(peer)
            .and_then(|name| models.providers().get(name))
            .is_some_and(|provider| !provider.tls)
    }

    fn decide_model(&mut self, send: &seccomp::SyscallRequest, model: &str) -> Answer {
        let Some(event) = crate::judge::event_from_seccomp(send, &mut self.judge.identities) else {
            return Answer::Allow;
        };
        match self.judge.decide_plaintext_model(&event, model) {
            oknek_event::Verdict::Block => Answer::DENY,
            _ => Answer::Allow,
        }
    }
}

/// Creates `dir` (and parents) if missing and makes sure it is a root-owned directory that
/// others cannot write to.
pub fn make_private_dir(dir: &Path, mode: u32) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let md = std::fs::symlink_metadata(dir)?;
    if !md.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a directory",
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Each fanotify mark holds an fd: raise the soft limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is valid for reading and writing.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn restrict_control_socket(path: &Path, gid: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if gid != 0 {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(())
}

/// Runs the daemon (the binary's main).
pub fn serve(
    config: Config,
    config_path: PathBuf,
    overrides: Overrides,
) -> Result<(), DaemonError> {
    let mut daemon = Daemon::start(config, config_path, overrides)?;
    info!("oknekd: runtime dir {}", daemon.runtime_dir().display());
    daemon.run()
}
